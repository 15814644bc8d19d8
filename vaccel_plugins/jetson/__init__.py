"""The jetson backend: image operations on NVIDIA's jetson-inference (JetPack on a Jetson).

``jetson_inference`` and ``jetson_utils`` exist only on a Jetson with JetPack; importing this
package never imports them. See :mod:`vaccel_plugins.jetson.backend` and ``docs/jetson.md``.
"""
