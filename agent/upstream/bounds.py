"""How many elements a request would make protobuf build, counted before it is parsed.

A message's bytes bound its size on the wire, not what parsing it costs: a 16 MiB request of
empty ``genop.Arg`` entries (two bytes each) becomes millions of message objects, tens of times
its size in memory. :func:`check_elements` walks the wire format (guided by the message's
descriptor, into nested messages) and counts every field occurrence, a packed number per byte;
a request over the budget is refused before protobuf sees it. The walk skips the bytes of
``bytes`` and ``string`` fields without touching them, so it costs at most ``limit`` steps.
"""

from __future__ import annotations

from typing import Any

#: Elements (fields, repeated entries, packed numbers) one request may hold, all levels together:
#: far more than any real call (an sgemm is 13) and a few MiB of parsed messages at most.
MAX_ELEMENTS = 1 << 16
#: Nesting the walk follows (upstream's deepest request nests 3 levels).
MAX_DEPTH = 8

_LENGTH_DELIMITED = 2
_MESSAGE = 11  # FieldDescriptor.TYPE_MESSAGE
_TEXT = (9, 12)  # FieldDescriptor.TYPE_STRING, TYPE_BYTES


class TooManyElements(Exception):
    """The request holds more elements than the budget."""


class Malformed(Exception):
    """The bytes are not a protobuf message (protobuf's own parse would fail too)."""


def _varint(data: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise Malformed("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def check_elements(payload: bytes, descriptor: Any, limit: int = MAX_ELEMENTS) -> int:
    """The number of elements in ``payload`` (a serialized ``descriptor`` message); raises
    TooManyElements past ``limit`` and Malformed for bytes protobuf would refuse."""
    budget = [limit]
    _walk(memoryview(payload), 0, len(payload), descriptor, budget, 0)
    return limit - budget[0]


def _walk(
    data: memoryview, pos: int, end: int, descriptor: Any, budget: list[int], depth: int
) -> None:
    fields = descriptor.fields_by_number if descriptor is not None else {}
    while pos < end:
        tag, pos = _varint(data, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if number == 0:
            raise Malformed("field number 0")
        budget[0] -= 1
        if budget[0] < 0:
            raise TooManyElements
        if wire_type == 0:
            _, pos = _varint(data, pos, end)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, pos = _varint(data, pos, end)
            start, pos = pos, pos + length
            if pos > end:
                raise Malformed("a length past the end of the message")
            field = fields.get(number)
            if field is None:
                continue
            if field.type == _MESSAGE:
                if depth >= MAX_DEPTH:
                    raise TooManyElements
                _walk(data, start, pos, field.message_type, budget, depth + 1)
            elif field.type not in _TEXT:
                budget[0] -= length  # packed numbers: at least one byte each
                if budget[0] < 0:
                    raise TooManyElements
        else:
            raise Malformed(f"wire type {wire_type}")
        if pos > end:
            raise Malformed("a field past the end of the message")
