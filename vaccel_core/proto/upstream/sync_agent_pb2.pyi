# ruff: noqa
from vaccel_core.proto.upstream import empty_pb2 as _empty_pb2
from vaccel_core.proto.upstream import genop_pb2 as _genop_pb2
from vaccel_core.proto.upstream import image_pb2 as _image_pb2
from vaccel_core.proto.upstream import profiling_pb2 as _profiling_pb2
from vaccel_core.proto.upstream import resource_pb2 as _resource_pb2
from vaccel_core.proto.upstream import session_pb2 as _session_pb2
from vaccel_core.proto.upstream import tf_pb2 as _tf_pb2
from vaccel_core.proto.upstream import tflite_pb2 as _tflite_pb2
from vaccel_core.proto.upstream import torch_pb2 as _torch_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
