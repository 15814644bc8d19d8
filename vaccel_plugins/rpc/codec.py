"""Catalog-driven encoding of operation arguments and results into agent.proto messages.

Shared by the rpc backend (guest) and the agent (host). Each operation has an ``<Op>Args`` and
an ``<Op>Result`` message whose fields follow the catalog's params/results by name, so one
routine per :class:`~vaccel_core.ops.Kind` handles every operation. Byte buffers and tensors of
``inline_limit`` bytes or more travel out of band (``Message.buffers``) and the message names
their index; the receiver builds numpy arrays over the received buffer with ``np.frombuffer``
(no copy; such arrays are read-only).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vaccel_core.errors import InvalidArgumentError, clip
from vaccel_core.ops import CATALOG, Kind, Op, OpSpec, Param
from vaccel_core.transport import Buffer

#: Buffers and tensors this big or bigger go out of band.
INLINE_LIMIT = 64 * 1024

_NUMERIC_KINDS = frozenset("biufc")
#: Most dimensions numpy supports in every version (numpy 1 allows 32, numpy 2 allows 64).
_MAX_DIMS = 32


def camel(name: str) -> str:
    """``image_classify`` -> ``ImageClassify`` (the message-name stem of an operation)."""
    return "".join(part.capitalize() for part in name.split("_"))


def args_message_name(spec: OpSpec) -> str:
    return f"{camel(spec.name)}Args"


def result_message_name(spec: OpSpec) -> str:
    return f"{camel(spec.name)}Result"


#: Each operation's catalog entry by its wire name (the ``OpRequest.args`` and
#: ``OpResponse.result`` case): a plain dict lookup per call instead of ``Op(name)``.
SPECS: dict[str, OpSpec] = {spec.name: spec for spec in CATALOG.values()}


def op_by_name(name: str) -> Op:
    return spec_by_name(name).op


def spec_by_name(name: str) -> OpSpec:
    """The catalog entry of the operation whose wire name is ``name``."""
    spec = SPECS.get(name)
    if spec is None:
        raise InvalidArgumentError(f"Run: unknown operation {clip(name)}")
    return spec


class Encoder:
    """Fills messages and collects the out-of-band buffers they refer to."""

    def __init__(self, inline_limit: int = INLINE_LIMIT) -> None:
        self.inline_limit = inline_limit
        self.buffers: list[Buffer] = []

    def _place(self, msg: Any, inline_field: str, view: memoryview) -> None:
        if view.nbytes >= self.inline_limit:
            msg.buffer = len(self.buffers)
            self.buffers.append(view)
        else:
            setattr(msg, inline_field, view.tobytes())

    def data(self, msg: Any, value: Buffer) -> None:
        view = memoryview(value)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        self._place(msg, "inline", view)

    def tensor(self, msg: Any, value: Any) -> None:
        array = np.asarray(value)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        array = np.ascontiguousarray(array)
        msg.dtype = array.dtype.name
        msg.shape.extend(array.shape)
        self._place(msg, "inline", array.reshape(-1).view(np.uint8).data)

    def value(self, msg: Any, param: Param, value: Any, resource_id: Callable[[Any], int]) -> None:
        """Set the field named after ``param`` in ``msg``; None leaves it unset."""
        if value is None:
            return
        kind, name = param.kind, param.name
        if kind is Kind.STR:
            if not isinstance(value, str):
                raise TypeError(f"'{name}': expected a string, got {type(value).__name__}")
            setattr(msg, name, value)
        elif kind is Kind.INT:
            setattr(msg, name, operator.index(value))
        elif kind is Kind.FLOAT:
            setattr(msg, name, float(value))
        elif kind is Kind.BYTES:
            self.data(getattr(msg, name), value)
        elif kind is Kind.TENSOR:
            self.tensor(getattr(msg, name), value)
        elif kind is Kind.TENSORS:
            field = getattr(msg, name)
            for item in value:
                self.tensor(field.add(), item)
        elif kind is Kind.NAMED_TENSORS:
            field = getattr(msg, name)
            if isinstance(value, Mapping):
                for key, item in value.items():
                    entry = field.items.add()
                    entry.name = key
                    self.tensor(entry.tensor, item)
            else:
                field.by_position = True
                for item in [value] if isinstance(value, np.ndarray) else value:
                    self.tensor(field.items.add().tensor, item)
        elif kind is Kind.BYTES_LIST:
            field = getattr(msg, name)
            for item in value:
                self.data(field.add(), item)
        elif kind in (Kind.INT_LIST, Kind.STR_LIST):
            getattr(msg, name).extend(value)
        elif kind is Kind.RESOURCE:
            setattr(msg, name, resource_id(value))
        else:  # pragma: no cover - a new Kind must be handled here
            raise AssertionError(f"unhandled kind {kind}")


#: A dtype name is a plain word (numpy would parse "f4,i4" and worse as structured types,
#: through ast.literal_eval).
_DTYPE_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_DTYPES: dict[str, np.dtype] = {}


def _dtype(name: str) -> np.dtype | None:
    """The numpy dtype a plain dtype name (``float32``, ``int64``, ``bool``) stands for."""
    if not isinstance(name, str) or not _DTYPE_NAME.match(name):
        return None
    try:
        dtype = np.dtype(name)
    except Exception:  # numpy raises several kinds for names it does not know
        return None
    if len(_DTYPES) < 64:
        _DTYPES[name] = dtype
    return dtype


class Decoder:
    """Reads messages filled by an :class:`Encoder`, resolving buffer indexes."""

    def __init__(self, buffers: Sequence[Buffer], where: str) -> None:
        self.buffers = buffers
        self.where = where  # operation method name, for error messages

    def _fail(self, name: str, what: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self.where}: argument '{name}': {what}")

    def _bytes(self, msg: Any, name: str, case: str | None) -> Buffer:
        if case == "buffer":
            index = msg.buffer
            if index >= len(self.buffers):
                raise self._fail(
                    name,
                    f"refers to out-of-band buffer {index}, but the message has "
                    f"{len(self.buffers)}",
                )
            return self.buffers[index]
        if case == "inline":
            return msg.inline
        return b""

    def data(self, msg: Any, name: str) -> Buffer:
        return self._bytes(msg, name, msg.WhichOneof("where"))

    def tensor(self, msg: Any, name: str) -> np.ndarray:
        dtype = _DTYPES.get(msg.dtype)
        if dtype is None:
            dtype = _dtype(msg.dtype)
        if dtype is None:
            raise self._fail(name, f"unknown tensor dtype {clip(msg.dtype)}")
        if dtype.kind not in _NUMERIC_KINDS and dtype.kind != "b":
            raise self._fail(name, f"expected a numeric tensor dtype, got {clip(msg.dtype)}")
        shape = tuple(int(d) for d in msg.shape)
        if any(d < 0 for d in shape):
            raise self._fail(name, f"negative dimension in tensor shape {shape}")
        if len(shape) > _MAX_DIMS:
            raise self._fail(
                name, f"expected a tensor of at most {_MAX_DIMS} dimensions, got {len(shape)}"
            )
        raw = self._bytes(msg, name, msg.WhichOneof("data"))
        # Python ints: a product of int64 would wrap (2**32 * 2**32 -> 0) and pass the check.
        count = math.prod(shape)
        expected = count * dtype.itemsize
        got = memoryview(raw).nbytes
        if got != expected:
            raise self._fail(
                name,
                f"tensor data has {got} bytes, expected {expected} for {dtype.name} shape {shape}",
            )
        try:
            return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
        except ValueError as exc:
            raise self._fail(
                name, f"cannot build a {dtype.name} tensor of shape {shape}: {exc}"
            ) from None

    def value(self, msg: Any, param: Param, resource: Callable[[int], Any] | None = None) -> Any:
        kind, name = param.kind, param.name
        if kind in (Kind.STR, Kind.INT, Kind.FLOAT):
            if param.optional and not msg.HasField(name):
                return param.default
            value = getattr(msg, name)
            return float(value) if kind is Kind.FLOAT else value
        if kind is Kind.BYTES:
            return self.data(getattr(msg, name), name)
        if kind is Kind.TENSOR:
            if not msg.HasField(name):
                if param.optional:
                    return None
                raise self._fail(name, "missing tensor")
            return self.tensor(getattr(msg, name), name)
        if kind is Kind.TENSORS:
            return [self.tensor(t, f"{name}[{i}]") for i, t in enumerate(getattr(msg, name))]
        if kind is Kind.NAMED_TENSORS:
            field = getattr(msg, name)
            if field.by_position:
                return [self.tensor(e.tensor, f"{name}[{i}]") for i, e in enumerate(field.items)]
            out: dict[str, np.ndarray] = {}
            for entry in field.items:
                if entry.name in out:
                    raise self._fail(name, f"duplicate tensor name {clip(entry.name)}")
                out[entry.name] = self.tensor(entry.tensor, f"{name}[{clip(entry.name)}]")
            return out
        if kind is Kind.BYTES_LIST:
            return [self.data(d, f"{name}[{i}]") for i, d in enumerate(getattr(msg, name))]
        if kind in (Kind.INT_LIST, Kind.STR_LIST):
            return list(getattr(msg, name))
        if kind is Kind.RESOURCE:
            if resource is None:  # pragma: no cover - results never carry resources
                raise self._fail(name, "a resource cannot appear here")
            return resource(getattr(msg, name))
        raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover


def encode_args(
    spec: OpSpec,
    args: Sequence[Any],
    msg: Any,
    encoder: Encoder,
    resource_id: Callable[[Any], int],
) -> None:
    """Fill an ``<Op>Args`` message from validated arguments (in catalog order)."""
    for param, value in zip(spec.params, args, strict=True):
        encoder.value(msg, param, value, resource_id)


def decode_args(
    spec: OpSpec, msg: Any, decoder: Decoder, resource: Callable[[int], Any]
) -> list[Any]:
    """The argument list of an ``<Op>Args`` message, ready for ``Session.genop``."""
    return [decoder.value(msg, param, resource) for param in spec.params]


def result_values(spec: OpSpec, value: Any) -> tuple[Any, ...]:
    """A backend's return value as one value per catalog result."""
    n = len(spec.results)
    if n == 0:
        return ()
    if n == 1:
        return (value,)
    if not isinstance(value, (tuple, list)) or len(value) != n:
        raise TypeError(
            f"{spec.method}: expected {n} results "
            f"({', '.join(r.name for r in spec.results)}), got {type(value).__name__}"
        )
    return tuple(value)


def encode_results(spec: OpSpec, value: Any, msg: Any, encoder: Encoder) -> None:
    """Fill an ``<Op>Result`` message from what the backend returned."""
    for param, item in zip(spec.results, result_values(spec, value), strict=True):
        encoder.value(msg, param, item, _no_resource)


def _plain_fields(params: Sequence[Param]) -> tuple[str, ...] | None:
    """The field names of ``params`` when each is a string or an integer that is always set
    (read as they are, no per-kind decoding); None otherwise."""
    if all(p.kind in (Kind.STR, Kind.INT) and not p.optional for p in params):
        return tuple(p.name for p in params)
    return None


#: Operations whose results are all plain fields (classify, detect, ...): their names, by
#: method name. The guest reads them as they are, with none of :meth:`Decoder.value`'s
#: per-kind dispatch: that runs right after the wait for the agent, when every line of Python
#: finds the caches cold (about 10 microseconds a call less, measured on a 2-vCPU VM).
_PLAIN_RESULTS: dict[str, tuple[str, ...]] = {
    spec.method: names
    for spec in CATALOG.values()
    if spec.results and (names := _plain_fields(spec.results)) is not None
}


def decode_results(spec: OpSpec, msg: Any, decoder: Decoder) -> Any:
    """What the local backend method returns: None, one value, or a tuple."""
    plain = _PLAIN_RESULTS.get(spec.method)
    if plain is not None:
        values = [getattr(msg, name) for name in plain]
    else:
        values = [decoder.value(msg, param) for param in spec.results]
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return tuple(values)


def _no_resource(value: Any) -> int:  # pragma: no cover - results never carry resources
    raise TypeError("results cannot carry resources")


__all__ = [
    "CATALOG",
    "INLINE_LIMIT",
    "SPECS",
    "Decoder",
    "Encoder",
    "args_message_name",
    "camel",
    "decode_args",
    "decode_results",
    "encode_args",
    "encode_results",
    "op_by_name",
    "result_message_name",
    "spec_by_name",
]
