"""The operation reference for backend authors, generated from the catalog.

    python -m vaccel_core.reference > docs/reference.md

Everything here is read from :data:`vaccel_core.ops.CATALOG` (names, codes, arguments,
results, their descriptions) so that the reference cannot drift from what the dispatcher
validates and checks; ``tests/core/test_reference.py`` fails when the committed file differs.
"""

from __future__ import annotations

import sys

from .ops import CATALOG, Kind, OpSpec, Param, expected_result

_HEADER = """\
# Operation reference

<!-- Generated from the operation catalog (vaccel_core/ops.py) by
     `python -m vaccel_core.reference > docs/reference.md`. Do not edit by hand: change the
     catalog and regenerate; tests/core/test_reference.py fails while the two disagree. -->

Every operation a backend can implement, as the dispatcher calls it. A backend implements an
operation by defining a method with the operation's **method name**; `vaccel plugins` shows the
**wire name** (the name in the agent's protocol and in `session.genop`, which also accepts the
method name and the upstream code).

**Arguments.** The method receives the calling `Session` first, then the arguments below as
positional arguments, in this order, already validated against the catalog (a backend need not
check types, dtypes or dimensions again). An optional argument the caller left out arrives as its
default (for a tensor: `None`). Arrays are C-contiguous and may be read-only (on the agent they
are views of the received message): copy before writing into one. Byte buffers may be `bytes`,
`bytearray` or `memoryview`.

**Results.** An operation with no result returns `None`; one result is returned bare (not in a
tuple); several are returned as a tuple, in this order. The dispatcher checks every result
against this reference (`vaccel_core.ops.check_result`): anything else is a `BackendError`
naming the backend, the operation, what was expected and what was got (`INTERNAL` through the
agent).
"""


def received(param: Param) -> str:
    """What a backend method receives for one argument, in words."""
    kind = param.kind
    if kind is Kind.TENSOR:
        dtype = f"{param.dtype} " if param.dtype else ""
        ndim = f", {param.ndim}-D" if param.ndim is not None else ""
        text = f"{dtype}numpy array{ndim}"
    elif kind is Kind.RESOURCE:
        rtype = f"{param.resource_type.name} " if param.resource_type is not None else ""
        text = f"`Resource` ({rtype}type, registered with the session)"
    else:
        text = {
            Kind.BYTES: "bytes-like (non-empty)",
            Kind.STR: "str",
            Kind.INT: "int",
            Kind.FLOAT: "float",
            Kind.TENSORS: "list of numpy arrays",
            Kind.NAMED_TENSORS: "dict name -> numpy array, or a list of numpy arrays (by position)",
            Kind.BYTES_LIST: "list of bytes-like",
            Kind.INT_LIST: "list of int",
            Kind.STR_LIST: "list of str",
        }[kind]
    if param.optional:
        text += f"; `{param.default!r}` when not given"
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|") or "—"


def _signature(spec: OpSpec) -> str:
    args = ", ".join(["self", "session", *(p.name for p in spec.params)])
    if not spec.results:
        returns = "None"
    elif len(spec.results) == 1:
        returns = spec.results[0].name
    else:
        returns = "(" + ", ".join(r.name for r in spec.results) + ")"
    return f"def {spec.method}({args}) -> {returns}"


def _section(spec: OpSpec) -> list[str]:
    code = "none (our own operation)" if spec.code is None else str(spec.code)
    lines = [
        f"## `{spec.method}`",
        "",
        f"Wire name `{spec.name}`, upstream code {code}. {spec.doc}",
        "",
        "```python",
        _signature(spec),
        "```",
        "",
    ]
    if spec.params:
        lines += ["| # | argument | the backend receives | meaning |", "| --- | --- | --- | --- |"]
        for i, p in enumerate(spec.params, 1):
            lines.append(f"| {i} | `{p.name}` | {_cell(received(p))} | {_cell(p.doc)} |")
    else:
        lines.append("No arguments besides the session.")
    lines.append("")
    if not spec.results:
        lines.append("Returns `None`.")
    else:
        how = "one value, bare" if len(spec.results) == 1 else "a tuple, in this order"
        lines += [
            f"Returns {how}:",
            "",
            "| result | must be | meaning |",
            "| --- | --- | --- |",
        ]
        for r in spec.results:
            lines.append(f"| `{r.name}` | {_cell(expected_result(r))} | {_cell(r.doc)} |")
    lines.append("")
    return lines


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [_HEADER, "## Summary", ""]
    lines += ["| method | wire name | upstream code | returns |", "| --- | --- | --- | --- |"]
    for spec in CATALOG.values():
        code = "—" if spec.code is None else str(spec.code)
        results = ", ".join(r.name for r in spec.results) or "None"
        if len(spec.results) > 1:
            results = f"({results})"
        lines.append(f"| [`{spec.method}`](#{spec.method}) | `{spec.name}` | {code} | {results} |")
    lines.append("")
    for spec in CATALOG.values():
        lines += _section(spec)
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
