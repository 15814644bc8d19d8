"""A third-party backend: reverses image bytes and reports their size. Nothing in the core
knows about it; it is found through the ``vaccel.backends`` entry point."""

from vaccel_core import Backend, PluginType, hookimpl


class DemoBackend(Backend):
    name = "demo"
    version = "1.2.3"
    type = PluginType.CPU | PluginType.GENERIC
    description = "third-party demo backend"

    def classify(self, session, image):
        return f"demo saw {len(image)} bytes", "demo.png"

    def noop(self, session):
        session.meta["demo_noops"] = session.meta.get("demo_noops", 0) + 1


@hookimpl
def vaccel_register_backends(register):
    register(DemoBackend)
