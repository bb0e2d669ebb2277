"""Late readings as the hourly rollup's input, merged by the writer's own commit.

On the PostgreSQL path the hourly rollup gets a write's readings in one of two ways, by the
writer's clock (``readings_sink``):
- readings of the hour still open: the hour is noted whole in ``rollup_dirty`` and
  ``storage.rollups`` recomputes it from raw rows once it has closed, so a device reporting
  every minute costs the rollup one row per hour and metric, not one update per uplink;
- readings of hours already closed (NB-IoT backlogs: a meter sends four hourly samples every
  4 h, three of them in closed hours; skewed clocks; re-sent data): merged in the write's
  transaction. The readings go once more as four array parameters (device, metric, time,
  value; built here) to ``write_sql.ROLLUP_MERGE``, which groups them by (device, metric,
  hour) and merges the groups into the rollup: sums and counts added, minimum and maximum
  kept, the newest value kept by time. A re-delivery stores nothing and so adds nothing (the
  slow path merges only the rows its insert returned, in SQL).
Before (to 2026-12-05), late rows noted (hour, device) entries and the refresh recomputed those
devices' rows of the hour from raw rows: reading each back, for a rollup row per reading in the
e2e benchmark's mix, where most rows are late. Grouping in Python instead (a dict of partial
aggregates) cost 1.6 us per rollup row (``loadtests.write_rows_bench``), four times these arrays.

The arrays use the binary format of ``array_recv`` (``copy_binary``), sent as they are
(``copy_binary.Raw``); times are PostgreSQL-epoch microseconds, which is what a binary
``timestamptz`` is.
"""

from __future__ import annotations

import array
import struct
import sys
from collections.abc import Sequence

from citysense.records import RecordBatch
from storage import copy_binary as cb
from storage.latest_state import PG_EPOCH_US

HOUR_US = 3_600_000_000  # the rollup's bucket; PG-epoch hours are BUCKET_ORIGIN's hours
_TEXT, _FLOAT8, _TSTZ = 25, 701, 1184
_HEAD = ">iiiii"  # ndim, has-nulls, element oid, length, lower bound


def _array(oid: int, code: str, items: Sequence[float]) -> cb.Raw:
    """A one-dimensional int8 / float8 / timestamptz array (8-byte elements) in binary.

    Each element is its size (int32 8) and its big-endian value: built with strided copies
    from an ``array.array``, in C, not with one ``struct`` format per call (which ``struct``
    compiles anew for every length)."""
    n = len(items)
    if not n:
        return cb.Raw(struct.pack(">iii", 0, 0, oid))
    values = array.array(code, items)
    if sys.byteorder == "little":
        values.byteswap()
    raw = values.tobytes()
    out = bytearray(12 * n)
    out[3::12] = b"\x08" * n
    for k in range(8):
        out[4 + k::12] = raw[k::8]
    return cb.Raw(struct.pack(_HEAD, 1, 0, oid, n, 1) + out)


def _text_array(fields: list[bytes]) -> cb.Raw:
    """A one-dimensional text array of elements already encoded (``copy_binary.text_field``)."""
    if not fields:
        return cb.Raw(struct.pack(">iii", 0, 0, _TEXT))
    return cb.Raw(struct.pack(_HEAD, 1, 0, _TEXT, len(fields), 1) + b"".join(fields))


def params(batches: Sequence[RecordBatch], before: int) -> list[cb.Raw]:
    """The readings of ``batches`` earlier than ``before`` (PG-epoch us: the open hour's start)
    as ``write_sql.ROLLUP_MERGE``'s parameters: device, metric, time and value arrays. Values
    are finite here (``write_rows`` refused the others)."""
    shift = PG_EPOCH_US * 1000
    limit = before * 1000 + shift  # in Unix nanoseconds, as the readings carry it
    readings = [r for b in batches for r in b.readings if r.time_ns < limit]
    devices = [r.device_id for r in readings]
    device_fields = {d: cb.text_field(d) for d in set(devices)}  # each device encoded once
    metric = cb.cached_text_field
    return [
        _text_array([device_fields[d] for d in devices]),
        _text_array([metric(r.metric) for r in readings]),
        _array(_TSTZ, "q", [(r.time_ns - shift) // 1000 for r in readings]),
        _array(_FLOAT8, "d", [r.value for r in readings]),
    ]
