"""Hypothesis strategies for every request of agent.proto, built from its descriptors.

:func:`request` draws one call: a method of ``vaccel.agent.v1.Agent`` (or a name that is not
one), a serialized request message of that method's type and the out-of-band buffers sent
with it. Messages are generated field by field from the protobuf descriptors (every field,
every oneof case, every repeated and optional field), so a field added to agent.proto is fuzzed
without touching this file. Values are biased towards what breaks code: ids of the caller's own
sessions and resources and of another client's, zero and huge numbers, sizes that match and do
not match, buffer indexes just past the end, valid and nonsense dtypes, shapes with zero,
negative and huge dimensions, file names with ``/``, ``..``, NUL and 4096 characters, strings
and bytes of a few MiB. Tensors are made coherent (dtype, shape and data agree, as the catalog
wants them) half of the time, so that calls also get past validation into the backends.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from vaccel_core.ops import CATALOG
from vaccel_core.proto import pb
from vaccel_plugins.rpc import codec

P = pb()
SERVICE = P.DESCRIPTOR.services_by_name["Agent"]
#: Every method of the service (name -> (request class, response class, server streaming)).
METHODS: dict[str, tuple[Any, Any, bool]] = {
    m.name: (
        message_factory.GetMessageClass(m.input_type),
        message_factory.GetMessageClass(m.output_type),
        m.server_streaming,
    )
    for m in SERVICE.methods
}
UNARY = [name for name, (_, _, streaming) in METHODS.items() if not streaming]
#: The OpRequest.args oneof cases (one per operation of the catalog).
OP_CASES = [f.name for f in P.OpRequest.DESCRIPTOR.oneofs_by_name["args"].fields]

INT64 = (-(1 << 63), (1 << 63) - 1)
UINT64 = (0, (1 << 64) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
UINT32 = (0, (1 << 32) - 1)
MiB = 1 << 20


@dataclass
class Known:
    """What exists when a request is drawn: ids the drawn request may name."""

    own_sessions: list[int] = field(default_factory=list)
    other_sessions: list[int] = field(default_factory=list)
    own_resources: list[int] = field(default_factory=list)
    other_resources: list[int] = field(default_factory=list)
    held_digests: list[str] = field(default_factory=list)  # blobs this client uploaded
    other_digests: list[str] = field(default_factory=list)  # blobs only the other one did
    held_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Drawn:
    """One drawn call."""

    method: str
    message: Any  # the request message (None when ``payload`` is raw bytes)
    payload: bytes
    buffers: list[bytes]

    def __repr__(self) -> str:
        return (
            f"Drawn(method={_clip(self.method)}, payload={len(self.payload)} B, "
            f"buffers={[len(b) for b in self.buffers]}, message={describe(self.message)})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """What hypothesis prints for a failing example: long values clipped."""
        printer.text(repr(self))


def _clip(value: Any, limit: int = 80) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    n = len(value) if isinstance(value, (str, bytes)) else len(text)
    return f"{text[: limit - 10]}...({n} {'chars' if isinstance(value, str) else 'B'})"


def describe(msg: Any, depth: int = 0) -> str:
    """A one-line view of a message with every long string and bytes value clipped."""
    if msg is None:
        return "None"
    parts = []
    for fd, value in msg.ListFields():
        repeated = _is_repeated(fd)
        items = list(value) if repeated else [value]
        shown = [describe(v, depth + 1) if fd.message_type is not None else _clip(v) for v in items]
        if repeated and len(shown) > 6:
            shown = [*shown[:6], f"...({len(shown)} items)"]
        parts.append(f"{fd.name}=" + (f"[{', '.join(shown)}]" if repeated else shown[0]))
    return f"{msg.DESCRIPTOR.name}({', '.join(parts)})"


# Scalars -------------------------------------------------------------------------------------
def _edge_ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (0, 1, 2, 3, 7, 64, 255, 4096, 65536, 1 << 31, (1 << 31) - 1,
                         1 << 32, (1 << 32) - 1, 1 << 40, 1 << 62, hi, lo, -1, -2)
             if lo <= v <= hi]  # fmt: skip
    return st.one_of(st.sampled_from(edges), st.integers(0, min(hi, 1 << 16)), st.integers(lo, hi))


#: Set while the items of a repeated field are drawn: no value of megabytes there (300 items
#: of 2 MiB would only measure this process's memory).
_SMALL: contextvars.ContextVar[bool] = contextvars.ContextVar("small", default=False)


@contextlib.contextmanager
def _small() -> Iterator[None]:
    token = _SMALL.set(True)
    try:
        yield
    finally:
        _SMALL.reset(token)


def big_text() -> st.SearchStrategy[str]:
    """Short strings mostly; now and then one of thousands to millions of characters."""
    if _SMALL.get():
        return st.one_of(st.text(max_size=40), st.just("s" * 4096))
    return st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda c, n: c * n,
            st.characters(codec="utf-8"),
            st.sampled_from([256, 4096, 70_000, 2 * MiB]),
        ),
    )


def big_bytes() -> st.SearchStrategy[bytes]:
    if _SMALL.get():
        return st.binary(max_size=64)
    return st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda b, n: b * n, st.binary(min_size=1, max_size=1), st.sampled_from([65536, MiB])
        ),
    )


def file_names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["model.onnx", "a", ".", "..", "", "a/b", "/etc/passwd", "../x",
                         "n\x00ul", "é", " ", "-rf", "x" * 255, "x" * 256, "y" * 4096]),
        st.text(max_size=20),
        big_text(),
    )  # fmt: skip


def digests(known: Known) -> st.SearchStrategy[str]:
    random_hex = st.binary(min_size=32, max_size=32).map(lambda b: hashlib.sha256(b).hexdigest())
    choices: list[st.SearchStrategy[str]] = [
        random_hex,
        random_hex.map(str.upper),
        st.text(alphabet="0123456789abcdef", max_size=70),
        big_text(),
    ]
    if known.other_digests:
        choices.insert(0, st.sampled_from(known.other_digests))
    if known.held_digests:
        choices.insert(0, st.sampled_from(known.held_digests))
    return st.one_of(*choices)


def ids(own: Sequence[int], other: Sequence[int] = ()) -> st.SearchStrategy[int]:
    choices: list[st.SearchStrategy[int]] = [_edge_ints(*UINT64)]
    if own:
        choices.insert(0, st.sampled_from(list(own)))
    if other:
        choices.insert(1, st.sampled_from(list(other)))
    return st.one_of(*choices)


DTYPES = ["float32", "float64", "int32", "int64", "uint8", "int8", "bool", "float16",
          "complex64", "object", "V8", "S4", "U3", "<f4", ">i8", "M8[s]", "", "nope",
          "f", ",", "f4,i4", "(2,)f4", "(1000000000,)f8", "a", "i4,(2"]  # fmt: skip


# Tensors ----------------------------------------------------------------------------------------
@st.composite
def tensor(draw: Any, msg: Any, buffers: list[bytes], dtype: str | None, ndim: int | None) -> None:
    """Fill a Tensor message: coherent half of the time, anything the rest."""
    if draw(st.booleans()):
        name = dtype or draw(st.sampled_from(["float32", "float64", "int32", "uint8"]))
        dims = ndim if ndim is not None else draw(st.integers(0, 3))
        # Small dimensions, so that two tensors often agree (sgemm, vectoradd, ...).
        shape = draw(st.lists(st.integers(0, 3), min_size=dims, max_size=dims))
        nbytes = math.prod(shape) * np.dtype(name).itemsize
        msg.dtype = name
        msg.shape.extend(shape)
        small = nbytes <= 4096
        data = draw(st.binary(min_size=nbytes, max_size=nbytes)) if small else bytes(nbytes)
        if draw(st.booleans()):
            msg.buffer = len(buffers)
            buffers.append(data)
        else:
            msg.inline = data
        return
    msg.dtype = draw(st.one_of(st.sampled_from(DTYPES), st.text(max_size=10), big_text()))
    ndims = draw(st.sampled_from([0, 1, 2, 3, 40, 300]))
    msg.shape.extend(
        draw(st.lists(st.one_of(st.integers(-2, 8), _edge_ints(*INT64)), max_size=ndims))
    )
    where = draw(st.sampled_from(["inline", "buffer", "none"]))
    if where == "inline":
        msg.inline = draw(big_bytes())
    elif where == "buffer":
        msg.buffer = draw(buffer_index(buffers))


def buffer_index(buffers: list[bytes]) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, len(buffers) + 2), st.sampled_from([UINT32[1], 1 << 31]))


# Messages from descriptors -----------------------------------------------------------------------
def _is_repeated(f: FieldDescriptor) -> bool:
    rep = getattr(f, "is_repeated", None)
    if rep is not None:
        return bool(rep)
    return f.label == FieldDescriptor.LABEL_REPEATED  # type: ignore[attr-defined, unused-ignore]


def _real_oneofs(desc: Descriptor) -> list[Any]:
    return [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name == "_" + o.fields[0].name)]


def _count(draw: Any) -> int:
    return int(draw(st.one_of(st.integers(0, 3), st.sampled_from([0, 1, 8, 40, 300]))))


@st.composite
def fill(
    draw: Any, msg: Any, known: Known, buffers: list[bytes], op: str | None = None, depth: int = 0
) -> Any:
    """Fill ``msg`` (a message instance) field by field from its descriptor."""
    desc = msg.DESCRIPTOR
    params = {}
    if op is not None:
        spec = CATALOG[codec.op_by_name(op)]
        params = {p.name: p for p in spec.params}
    chosen: set[str] = set()
    for oneof in _real_oneofs(desc):
        names = [f.name for f in oneof.fields]
        pick = draw(st.sampled_from([*names, None]))
        if pick is not None:
            chosen.add(pick)
        chosen_all = set(names) - ({pick} if pick else set())
        chosen |= {f"!{n}" for n in chosen_all}
    # Oneof members first, so that a field that depends on the case (OpRequest.op) sees it.
    for f in sorted(desc.fields, key=lambda f: f.name not in chosen):
        if f"!{f.name}" in chosen:
            continue
        in_oneof = f.name in chosen
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_repeated(f):
                with _small():
                    for _ in range(_count(draw)):
                        sub = getattr(msg, f.name).add()
                        _fill_sub(draw, sub, f, known, buffers, params, depth)
            elif in_oneof or draw(st.booleans()):
                sub = getattr(msg, f.name)
                sub.SetInParent()
                _fill_sub(draw, sub, f, known, buffers, params, depth)
            continue
        if _is_repeated(f):
            with _small():
                values = [scalar(draw, msg, f, known, buffers) for _ in range(_count(draw))]
            getattr(msg, f.name).extend(values)
            continue
        if f.has_presence and not in_oneof and not draw(st.booleans()):
            continue
        if not in_oneof and not f.has_presence and draw(st.integers(0, 4)) == 0:
            continue  # the default
        setattr(msg, f.name, scalar(draw, msg, f, known, buffers))
    return msg


def _fill_sub(
    draw: Any,
    sub: Any,
    f: FieldDescriptor,
    known: Known,
    buffers: list[bytes],
    params: dict[str, Any],
    depth: int,
) -> None:
    name = sub.DESCRIPTOR.name
    if name == "Tensor":
        param = params.get(f.name)
        draw(tensor(sub, buffers, getattr(param, "dtype", None), getattr(param, "ndim", None)))
    elif name == "Data":
        where = draw(st.sampled_from(["inline", "buffer", "none"]))
        if where == "inline":
            sub.inline = draw(big_bytes())
        elif where == "buffer":
            if draw(st.booleans()):
                sub.buffer = len(buffers)
                buffers.append(draw(st.binary(max_size=4096 if _SMALL.get() else 70_000)))
            else:
                sub.buffer = draw(buffer_index(buffers))
    elif depth < 4:
        args = f.containing_oneof is not None and f.containing_oneof.name == "args"
        op = f.name if args else None
        draw(fill(sub, known, buffers, op, depth + 1))


def scalar(draw: Any, msg: Any, f: FieldDescriptor, known: Known, buffers: list[bytes]) -> Any:
    """A value for one scalar field, by its name first and its type second."""
    owner, name, t = msg.DESCRIPTOR.name, f.name, f.type
    if name == "session_id":
        return draw(ids(known.own_sessions, known.other_sessions))
    if name in ("resource_id", "resource"):
        return draw(ids(known.own_resources, known.other_resources))
    if name == "sha256":
        return draw(digests(known))
    if owner == "ResourceFileRef" and name == "name":
        return draw(file_names())
    if owner == "ResourceFileRef" and name == "size":
        sizes = list(known.held_sizes.values())
        return draw(st.one_of(st.sampled_from(sizes or [0]), _edge_ints(*UINT64)))
    if owner == "RegisterResourceRequest" and name == "type":
        return draw(st.one_of(st.integers(0, 3), _edge_ints(*UINT32)))
    if owner == "OpRequest" and name == "op":
        case = msg.WhichOneof("args")
        return draw(st.one_of(st.just(case or ""), st.sampled_from(OP_CASES), big_text()))
    if name in ("write_sizes", "nr_outputs"):
        return draw(st.one_of(st.integers(-1, 4096), _edge_ints(*INT64)))
    if name in ("offset", "size"):
        return draw(st.one_of(st.integers(0, 2048), _edge_ints(*UINT64)))
    if t in (FieldDescriptor.TYPE_STRING,):
        return draw(big_text())
    if t == FieldDescriptor.TYPE_BYTES:
        return draw(big_bytes())
    if t == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return draw(st.floats(allow_nan=True, allow_infinity=True, width=64))
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
             FieldDescriptor.TYPE_SFIXED64):  # fmt: skip
        return draw(_edge_ints(*INT64))
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return draw(_edge_ints(*UINT64))
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32,
             FieldDescriptor.TYPE_ENUM):  # fmt: skip
        return draw(_edge_ints(*INT32))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return draw(_edge_ints(*UINT32))
    raise AssertionError(f"{owner}.{name}: unhandled field type {t}")  # a new type: handle it


# Calls ------------------------------------------------------------------------------------
@st.composite
def request(
    draw: Any, known: Known, methods: Sequence[str] = tuple(UNARY), raw: bool = True
) -> Drawn:
    """One call: mostly a well-typed message of a real method; sometimes raw bytes as the
    payload (malformed protobuf) or a method that does not exist."""
    kind = draw(st.sampled_from(["message"] * 8 + (["raw", "unknown"] if raw else [])))
    buffers = draw(st.lists(st.binary(max_size=80_000), max_size=2))
    if kind == "unknown":
        method = draw(st.one_of(st.sampled_from(["Attach", "", "run", "GetStatus/x"]), big_text()))
        if method in METHODS and not METHODS[method][2]:
            method += "_"
        return Drawn(method, None, draw(big_bytes()), buffers)
    method = draw(st.sampled_from(list(methods)))
    if kind == "raw":
        return Drawn(method, None, draw(big_bytes()), buffers)
    cls = METHODS[method][0]
    msg = draw(fill(cls(), known, buffers))
    if method == "Run" and known.own_sessions and draw(st.integers(0, 3)) != 0:
        # Most Run calls name a real session of the caller, so that they reach the backend.
        msg.session_id = known.own_sessions[0]
    return Drawn(method, msg, msg.SerializeToString(), buffers)


def op_request(known: Known) -> st.SearchStrategy[Drawn]:
    """Only Run calls (every OpRequest.args case), on the caller's own session."""

    @st.composite
    def build(draw: Any) -> Drawn:
        buffers: list[bytes] = []
        msg = P.OpRequest()
        case = draw(st.sampled_from(OP_CASES))
        getattr(msg, case).SetInParent()
        draw(fill(getattr(msg, case), known, buffers, case))
        msg.op = case if draw(st.integers(0, 5)) else draw(st.sampled_from(OP_CASES))
        if known.own_sessions:
            msg.session_id = known.own_sessions[0]
        return Drawn("Run", msg, msg.SerializeToString(), buffers)

    return build()


__all__ = ["METHODS", "OP_CASES", "UNARY", "Drawn", "Known", "op_request", "request"]
