"""Check and normalise operation arguments against the catalog before dispatch."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidArgumentError
from .ops import Kind, OpSpec, Param

if TYPE_CHECKING:
    from .resource import Resource
    from .session import Session


def _fail(spec: OpSpec, param: Param, expected: str, got: str) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{spec.method}: argument '{param.name}': expected {expected}, got {got}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"{type(value).__name__} of {len(value)} bytes"
    return type(value).__name__


def _tensor(spec: OpSpec, param: Param, value: Any, label: str | None = None) -> np.ndarray:
    where = label or param.name
    p = Param(where, param.kind, dtype=param.dtype, ndim=param.ndim)
    if isinstance(value, np.ndarray):
        array = value
        if param.dtype is not None and array.dtype != np.dtype(param.dtype):
            raise _fail(spec, p, f"a {param.dtype} array", _describe(value))
    else:
        try:
            array = np.asarray(value, dtype=param.dtype)
        except (TypeError, ValueError) as exc:
            raise _fail(
                spec, p, f"an array of {param.dtype or 'numbers'}", _describe(value)
            ) from exc
        if array.dtype == object:
            raise _fail(spec, p, "a numeric array", _describe(value))
    if param.ndim is not None and array.ndim != param.ndim:
        raise _fail(spec, p, f"a {param.ndim}-D array", f"shape {array.shape}")
    return np.ascontiguousarray(array)


def _resource(spec: OpSpec, param: Param, value: Any, session: Session) -> Resource:
    from .resource import Resource

    if not isinstance(value, Resource):
        raise _fail(spec, param, "a Resource", _describe(value))
    if param.resource_type is not None and value.type != param.resource_type:
        raise _fail(
            spec, param, f"a {param.resource_type.name} resource", f"a {value.type.name} resource"
        )
    if not session.has_resource(value):
        raise _fail(
            spec,
            param,
            f"a resource registered with session {session.id}",
            f"resource {value.id}, which is not registered with it",
        )
    return value


def _list(spec: OpSpec, param: Param, value: Any, item_types: tuple[type, ...], what: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(spec, param, f"a list of {what}", _describe(value))
    for i, item in enumerate(value):
        if not isinstance(item, item_types) or isinstance(item, bool):
            raise _fail(spec, param, f"a list of {what}", f"{_describe(item)} at index {i}")
    return list(value)


def check_value(spec: OpSpec, param: Param, value: Any, session: Session) -> Any:
    """Validate one argument; returns it normalised (arrays made contiguous, lists copied)."""
    kind = param.kind
    if value is None and param.optional:
        return param.default
    if kind is Kind.BYTES:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise _fail(spec, param, "bytes", _describe(value))
        if len(value) == 0:
            raise _fail(spec, param, "a non-empty buffer", "0 bytes")
        return value
    if kind is Kind.STR:
        if not isinstance(value, str):
            raise _fail(spec, param, "a string", _describe(value))
        return value
    if kind is Kind.INT:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise _fail(spec, param, "an integer", _describe(value))
        return int(value)
    if kind is Kind.FLOAT:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise _fail(spec, param, "a number", _describe(value))
        return float(value)
    if kind is Kind.TENSOR:
        return _tensor(spec, param, value)
    if kind is Kind.TENSORS:
        if isinstance(value, np.ndarray):
            value = [value]
        items = _list(spec, param, value, (object,), "arrays")
        return [_tensor(spec, param, v, f"{param.name}[{i}]") for i, v in enumerate(items)]
    if kind is Kind.NAMED_TENSORS:
        if isinstance(value, Mapping):
            out = {}
            for name, v in value.items():
                if not isinstance(name, str):
                    raise _fail(spec, param, "input names as strings", _describe(name))
                out[name] = _tensor(spec, param, v, f"{param.name}[{name!r}]")
            return out
        if isinstance(value, np.ndarray):
            value = [value]
        items = _list(spec, param, value, (object,), "arrays")
        return [_tensor(spec, param, v, f"{param.name}[{i}]") for i, v in enumerate(items)]
    if kind is Kind.BYTES_LIST:
        return _list(spec, param, value, (bytes, bytearray, memoryview), "bytes")
    if kind is Kind.INT_LIST:
        return [int(v) for v in _list(spec, param, value, (numbers.Integral,), "integers")]
    if kind is Kind.STR_LIST:
        return _list(spec, param, value, (str,), "strings")
    if kind is Kind.RESOURCE:
        return _resource(spec, param, value, session)
    raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover


def check_args(spec: OpSpec, args: Sequence[Any], session: Session) -> tuple[Any, ...]:
    """Validate every argument of one call and run the operation's cross-argument check."""
    params = spec.params
    if len(args) > len(params):
        raise InvalidArgumentError(
            f"{spec.method}: expected at most {len(params)} arguments, got {len(args)}"
        )
    values = []
    for i, param in enumerate(params):
        if i < len(args):
            values.append(check_value(spec, param, args[i], session))
        elif param.optional:
            values.append(param.default)
        else:
            raise InvalidArgumentError(f"{spec.method}: missing argument '{param.name}'")
    if spec.check is not None:
        spec.check(spec, values)
    return tuple(values)
