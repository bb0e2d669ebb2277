"""PostgreSQL's binary formats, built with ``struct`` for the writer's two big streams.

psycopg's ``Copy.write_row`` dumps a row field by field through its
adapters: about a microsecond per reading, more than the rest of the
writer's Python together, and spent while the server waits for data. The
readings and device-state rows have fixed, known types, so the writer
builds their COPY data itself and hands psycopg whole blocks
(``Copy.write``): a row is a field count, then per field its size in bytes
(-1 for NULL) and its binary value, big-endian. The stream opens with
``HEADER`` and ends with ``TRAILER``. Binary ``timestamptz`` is an int64 of
microseconds since 2000-01-01 UTC, so times go as plain int8.

The per-device state goes as one parameter, an array of records
(``record_array``). Arrays (``text[]``, ``int8[]``, ``float8[]``, records)
use the format of ``array_recv``: dimensions, a has-NULLs flag, the element
type oid, then per dimension its length and lower bound, then each element
with its size.
"""

from __future__ import annotations

import array
import functools
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from psycopg.abc import Buffer
from psycopg.adapt import Dumper
from psycopg.pq import Format

HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags (none), header extension (none)
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"

_TEXT_OID, _INT8_OID, _FLOAT8_OID = 25, 20, 701
_ARRAY = ">iiiii"  # ndim, has-nulls, element oid, length, lower bound
_MAX_CACHED = 4096

_text_fields: dict[str, bytes] = {}


def text_field(value: str) -> bytes:
    """A ``text`` field: size and UTF-8 bytes. Raises UnicodeEncodeError (a ValueError) for a
    string UTF-8 cannot hold; PostgreSQL itself refuses a NUL character."""
    raw = value.encode()
    return len(raw).to_bytes(4, "big") + raw


def cached_text_field(value: str) -> bytes:
    """``text_field`` for the few strings that recur in every batch (metric names)."""
    field = _text_fields.get(value)
    if field is None:
        if len(_text_fields) >= _MAX_CACHED:
            _text_fields.clear()
        field = _text_fields[value] = text_field(value)
    return field


# A record (composite) in binary is its column count, then per column the column type's
# oid, its size (-1 for NULL) and its value (``record_recv``); an array of records has the
# composite type's oid as element type. The writer's device input is such an array.
TIMESTAMPTZ_OID, _TEXT_ARRAY_OID, _INT8_ARRAY_OID, _FLOAT8_ARRAY_OID = 1184, 1009, 1016, 1022
TEXT_COLUMN = _TEXT_OID.to_bytes(4, "big")  # followed by a text_field
TIMESTAMPTZ = struct.Struct(">iiq")  # a non-null timestamptz column: oid, size (8), microseconds
NULL_TIMESTAMPTZ = TIMESTAMPTZ_OID.to_bytes(4, "big") + NULL


def timestamptz_or_null(value: int | None) -> bytes:
    return NULL_TIMESTAMPTZ if value is None else TIMESTAMPTZ.pack(TIMESTAMPTZ_OID, 8, value)


def timestamptz(value: int) -> bytes:
    return TIMESTAMPTZ.pack(TIMESTAMPTZ_OID, 8, value)


def record_array(element_oid: int, elements: list[bytes]) -> bytes:
    """A one-dimensional array of records, each element given as its size and record."""
    if not elements:
        return struct.pack(">iii", 0, 0, element_oid)
    return struct.pack(_ARRAY, 1, 0, element_oid, len(elements), 1) + b"".join(elements)


def text_array(fields: list[bytes]) -> Raw:
    """A one-dimensional ``text[]`` of elements already encoded (``text_field``)."""
    if not fields:
        return Raw(struct.pack(">iii", 0, 0, _TEXT_OID))
    return Raw(struct.pack(_ARRAY, 1, 0, _TEXT_OID, len(fields), 1) + b"".join(fields))


def float8_array(items: Sequence[float]) -> Raw:
    return _eight_byte_array(_FLOAT8_OID, "d", items)


def timestamptz_array(items: Sequence[int]) -> Raw:
    """PostgreSQL-epoch microseconds, as a binary ``timestamptz`` is."""
    return _eight_byte_array(TIMESTAMPTZ_OID, "q", items)


def _eight_byte_array(oid: int, code: str, items: Sequence[float]) -> Raw:
    """A one-dimensional array of 8-byte elements, each its size (int32 8) and its big-endian
    value: built with strided copies from an ``array.array``, in C. ``ArrayPlan``'s one
    ``struct`` per call suits its short, recurring lengths; for thousands of elements of
    every length ``struct`` would compile a new format each time."""
    n = len(items)
    if not n:
        return Raw(struct.pack(">iii", 0, 0, oid))
    values = array.array(code, items)
    if sys.byteorder == "little":
        values.byteswap()
    raw = values.tobytes()
    out = bytearray(12 * n)
    out[3::12] = b"\x08" * n
    for k in range(8):
        out[4 + k::12] = raw[k::8]
    return Raw(struct.pack(_ARRAY, 1, 0, oid, n, 1) + out)


@dataclass(frozen=True, slots=True)
class ArrayPlan:
    """How to encode arrays over one sorted set of metric names (cached: the sets are few).

    Each array is a whole record column: the array type's oid, its size, the array.
    """

    metrics: tuple[str, ...]  # sorted
    names: bytes  # the text[] column of the names, ready
    int8: struct.Struct
    float8: struct.Struct
    int8_head: tuple[int, ...]
    float8_head: tuple[int, ...]
    int8_prefix: bytes  # the int8[] column's oid, size and array header alone

    def int8_column(self, items: list[int]) -> bytes:
        n = len(items)
        if items.count(items[0]) == n:  # one uplink's readings mostly share their times
            return self.int8_prefix + (b"\x00\x00\x00\x08" + items[0].to_bytes(8, "big", signed=True)) * n
        return self.int8.pack(*self.int8_head, *_with_sizes(items))

    def int8_same(self, value: int) -> bytes:
        """The int8[] column of one value repeated for every metric."""
        element = b"\x00\x00\x00\x08" + value.to_bytes(8, "big", signed=True)
        return self.int8_prefix + element * len(self.metrics)

    def float8_column(self, items: list[float]) -> bytes:
        return self.float8.pack(*self.float8_head, *_with_sizes(items))


@functools.lru_cache(maxsize=_MAX_CACHED)
def array_plan(metrics_in_arrival_order: tuple[str, ...]) -> ArrayPlan:
    metrics = tuple(sorted(metrics_in_arrival_order))
    n = len(metrics)
    size = 20 + 12 * n  # the array header, then per element its size (4) and value (8)
    names = [struct.pack(_ARRAY, 1, 0, _TEXT_OID, n, 1)]
    for m in metrics:
        names.append(text_field(m))  # an element is encoded as a field is
    body = b"".join(names)
    fmt = ">ii" + _ARRAY[1:] + "iq" * n
    return ArrayPlan(
        metrics, struct.pack(">ii", _TEXT_ARRAY_OID, len(body)) + body,
        struct.Struct(fmt), struct.Struct(fmt.replace("q", "d")),
        (_INT8_ARRAY_OID, size, 1, 0, _INT8_OID, n, 1), (_FLOAT8_ARRAY_OID, size, 1, 0, _FLOAT8_OID, n, 1),
        struct.pack(">ii" + _ARRAY[1:], _INT8_ARRAY_OID, size, 1, 0, _INT8_OID, n, 1))


def _with_sizes(items: list[int] | list[float]) -> list[float]:
    """[a, b] -> [8, a, 8, b]: each array element is preceded by its size in bytes."""
    out: list[float] = [8] * (2 * len(items))
    out[1::2] = items
    return out


# Zero-dimension arrays (text[], int8[], float8[]) as record columns: what an empty array is.
EMPTY_TEXT_ARRAY, EMPTY_INT8_ARRAY, EMPTY_FLOAT8_ARRAY = (
    struct.pack(">iiiii", array_oid, 12, 0, 0, oid)
    for array_oid, oid in ((_TEXT_ARRAY_OID, _TEXT_OID), (_INT8_ARRAY_OID, _INT8_OID),
                           (_FLOAT8_ARRAY_OID, _FLOAT8_OID)))


class Raw(bytes):
    """A parameter already in its type's binary form (``record_array``): sent as it is."""


class RawDumper(Dumper):
    """Dumps ``Raw`` unchanged, typed "unknown": the server takes the type from the cast
    the statement puts on the parameter, and reads the bytes with that type's receive."""

    format = Format.BINARY
    oid = 0

    def dump(self, obj: Any) -> Buffer:
        return cast(bytes, obj)
