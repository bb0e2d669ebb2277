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
Devices without an hourly rollup (``rollups_schema.hourly_rollup_class``: meters, sampling
hourly) are left out of both: the sink filters their late readings out by a cache of the class,
which is fixed at registration, and the refresh and the slow path by ``write_sql.HAS_ROLLUP``.
Before (to 2026-12-05), late rows noted (hour, device) entries and the refresh recomputed those
devices' rows of the hour from raw rows: reading each back, for a rollup row per reading in the
e2e benchmark's mix, where most rows are late. Grouping in Python instead (a dict of partial
aggregates) cost 1.6 us per rollup row, against 0.4-0.5 us per reading for these arrays
(``loadtests.write_rows_bench``; the dict version is not kept).

The arrays use the binary format of ``array_recv`` (``copy_binary``), sent as they are
(``copy_binary.Raw``); times are PostgreSQL-epoch microseconds, which is what a binary
``timestamptz`` is.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from citysense.records import Reading, RecordBatch
from storage import copy_binary as cb
from storage.latest_state import PG_EPOCH_US
from storage.schema import ROLLUPS
from storage.write_sql import ROLLUP

HOUR_US = ROLLUPS[ROLLUP] // timedelta(microseconds=1)
# Buckets are cut here from the PostgreSQL epoch (2000-01-01), in SQL from BUCKET_ORIGIN
# (2000-01-03): the same boundaries while the width divides those two days.
assert (2 * 86_400_000_000) % HOUR_US == 0
_SHIFT_NS = PG_EPOCH_US * 1000


def late(batches: Sequence[RecordBatch], before: int) -> list[Reading]:
    """The readings of ``batches`` earlier than ``before`` (PG-epoch us: the open hour's start)."""
    limit = before * 1000 + _SHIFT_NS  # in Unix nanoseconds, as the readings carry it
    return [r for b in batches for r in b.readings if r.time_ns < limit]


def params(readings: Sequence[Reading]) -> list[cb.Raw]:
    """``readings`` as ``write_sql.ROLLUP_MERGE``'s parameters: device, metric, time and value
    arrays. Values are finite here (``write_rows`` refused the others)."""
    devices = [r.device_id for r in readings]
    device_fields = {d: cb.text_field(d) for d in set(devices)}  # each device encoded once
    metric = cb.cached_text_field
    return [
        cb.text_array([device_fields[d] for d in devices]),
        cb.text_array([metric(r.metric) for r in readings]),
        cb.timestamptz_array([(r.time_ns - _SHIFT_NS) // 1000 for r in readings]),
        cb.float8_array([r.value for r in readings]),
    ]
