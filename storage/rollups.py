"""Rollup refresh on the PostgreSQL path: recompute listed buckets from raw rows.

The writer appends the open hours a batch touched to ``rollup_dirty`` (no key,
so writers never wait on each other; ``device_id`` NULL: the whole bucket), and
merges readings of hours already closed itself (``storage.rollup_delta``, since
2026-12-05; before, it noted those hours once per device whose late rows it
met, and entries naming a device are still recomputed for that device alone).
``refresh`` takes the *closed* dirty buckets (bucket end <= now), deletes their
entries and recomputes from ``readings`` with ``INSERT .. SELECT .. GROUP BY ..
ON CONFLICT DO UPDATE``: a bucket with a whole entry for all devices (read
through the BRIN index on time), otherwise only the listed devices' rows of it
(by the primary key, or a scan of the bucket for many devices), all under one
snapshot (REPEATABLE READ), so:

- recomputing from raw rows is idempotent and takes late rows at their real time;
- a writer committing after the snapshot leaves its own entries behind, so its
  rows are picked up by the next refresh and, until then, served raw by
  ``storage.queries`` (which reads raw rows for every bucket still listed).

Open buckets (the current minute and hour) stay dirty until they close, so
each bucket is normally computed once; their entries are compacted to one per
bucket. Buckets before the retention horizon
(the end of the newest dropped ``readings`` partition) are not recomputed:
their raw rows are gone, and a row accepted there after the drop would
otherwise replace a full bucket with a partial one; their entries are just
deleted. On TimescaleDB the continuous aggregates do all this and ``refresh``
does nothing. One refresh runs at a time (advisory lock; others return at once).
Devices without an hourly rollup (``rollups_schema.hourly_rollup_class``) are left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from psycopg import pq, sql

from storage import migrations
from storage.db import Conn
from storage.partitions import HORIZON_KEY
from storage.schema import BUCKET_ORIGIN, ROLLUPS, TIMESCALE
from storage.write_sql import HAS_ROLLUP

log = logging.getLogger(__name__)

_LOCK_KEY = 0x726F6C6C  # "roll"


@dataclass(slots=True)
class RefreshReport:
    buckets: dict[str, int]  # rollup -> whole buckets recomputed (every device)
    devices: dict[str, int] = field(default_factory=dict)  # rollup -> (bucket, device) recomputed
    skipped: int = 0  # dirty buckets before the retention horizon, dropped unrecomputed
    busy: bool = False  # another refresh held the lock

    def summary(self) -> str:
        done = ", ".join(f"{n} {name} (+{self.devices.get(name, 0)} device buckets)"
                         for name, n in self.buckets.items())
        return f"rollups refreshed: {done or 'nothing'}; {self.skipped} past retention skipped"


def _insert(name: str) -> sql.Composed:
    return sql.SQL(
        """INSERT INTO {} AS r (device_id, metric, bucket, value_sum, value_count,
                                value_min, value_max, last_time, last_value)""").format(sql.Identifier(name))


# Group the raw rows to rollup rows and store those that changed.
_UPSERT = sql.SQL(
    """GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
           ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
               value_sum = excluded.value_sum, value_count = excluded.value_count,
               value_min = excluded.value_min, value_max = excluded.value_max,
               last_time = excluded.last_time, last_value = excluded.last_value
           WHERE (r.value_sum, r.value_count, r.value_min, r.value_max, r.last_time, r.last_value)
                 IS DISTINCT FROM (excluded.value_sum, excluded.value_count, excluded.value_min,
                                   excluded.value_max, excluded.last_time, excluded.last_value)""")


def _recompute(name: str, width: timedelta) -> sql.Composed:
    """Every device's rows of the buckets in ``[lo, hi)``."""
    return sql.SQL(
        """{insert}
           SELECT device_id, metric, date_bin({width}, time, {origin}), sum(value), count(*),
                  min(value), max(value), max(time), (array_agg(value ORDER BY time DESC))[1]
           FROM readings WHERE time >= %(lo)s AND time < %(hi)s AND {has_rollup}
           {upsert}"""
    ).format(insert=_insert(name), width=sql.Literal(width), origin=sql.Literal(BUCKET_ORIGIN),
             upsert=_UPSERT, has_rollup=HAS_ROLLUP)


def _recompute_devices(name: str, width: timedelta) -> sql.Composed:
    """The rows of the given devices in one bucket. The planner reads them by primary key for
    a few devices, or scans the bucket's rows for many (hashed ``= ANY``). Measured on 1.2 M
    readings in 183,317 (hour, device) pairs (ad hoc, backend CPU): 10.5 s this way, 19.3 s
    with a lateral primary-key lookup per pair, 13.9 s recomputing the whole hours."""
    return sql.SQL(
        """{insert}
           SELECT device_id, metric, %(bucket)s::timestamptz, sum(value), count(*), min(value),
                  max(value), max(time), (array_agg(value ORDER BY time DESC))[1]
           FROM readings WHERE device_id = ANY (%(devices)s::text[])
               AND time >= %(bucket)s AND time < %(bucket)s::timestamptz + {width} AND {has_rollup}
           {upsert}"""
    ).format(insert=_insert(name), width=sql.Literal(width), upsert=_UPSERT, has_rollup=HAS_ROLLUP)


# Per closed bucket: whether it is dirty whole, and which devices it is dirty for. Grouped here,
# not in Python: the writer's process runs the refresh, and sorting some 45,000 (bucket, device)
# entries a refresh in Python cost it about 170 ms (the benchmark's replay, every 15 s).
_TAKE_CLOSED = sql.SQL(
    """WITH taken AS (DELETE FROM rollup_dirty WHERE rollup = %(rollup)s AND bucket <= %(closed)s
                      RETURNING bucket, device_id)
       SELECT bucket, bool_or(device_id IS NULL),
              coalesce(array_agg(DISTINCT device_id) FILTER (WHERE device_id IS NOT NULL), '{}')
       FROM taken GROUP BY bucket ORDER BY bucket""")

# Open buckets get one entry per write; keep one per bucket (and device) so the table (read
# by every rollup query) stays small. Entries committed after our snapshot are left alone.
_COMPACT_OPEN = sql.SQL(
    """WITH gone AS (DELETE FROM rollup_dirty WHERE rollup = %(rollup)s AND bucket > %(closed)s
                     RETURNING bucket, device_id)
       INSERT INTO rollup_dirty (rollup, bucket, device_id)
       SELECT DISTINCT %(rollup)s, bucket, device_id FROM gone""")


def runs(buckets: list[datetime], width: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted bucket starts -> ``[lo, hi)`` ranges of consecutive buckets."""
    out: list[tuple[datetime, datetime]] = []
    for b in buckets:
        if out and out[-1][1] == b:
            out[-1] = (out[-1][0], b + width)
        else:
            out.append((b, b + width))
    return out


async def refresh(conn: Conn, *, now: datetime | None = None) -> RefreshReport:
    """Recompute every closed dirty bucket of every rollup; the connection must be idle."""
    report = RefreshReport({name: 0 for name in ROLLUPS}, {name: 0 for name in ROLLUPS})
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise RuntimeError("refresh needs an idle connection (it runs its own REPEATABLE READ transaction)")
    now = now or datetime.now(UTC)
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if await migrations.backend(conn) == TIMESCALE:
            return report
        cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK_KEY,))
        row = await cur.fetchone()
        if not row or not row[0]:
            report.busy = True
            return report
        cur = await conn.execute("SELECT value::timestamptz FROM schema_meta WHERE key = %s", (HORIZON_KEY,))
        row = await cur.fetchone()
        horizon: datetime | None = row[0] if row else None
        for name, width in ROLLUPS.items():
            await conn.execute(_COMPACT_OPEN, {"rollup": name, "closed": now - width})
            cur = await conn.execute(_TAKE_CLOSED, {"rollup": name, "closed": now - width})
            taken: list[tuple[datetime, bool, list[str]]] = await cur.fetchall()
            kept = [t for t in taken if horizon is None or t[0] >= horizon]
            report.skipped += len(taken) - len(kept)
            whole = [b for b, is_whole, _ in kept if is_whole]
            for lo, hi in runs(whole, width):
                await conn.execute(_recompute(name, width), {"lo": lo, "hi": hi})
            for b, is_whole, devices in kept:
                if devices and not is_whole:  # a whole recompute covers its devices
                    await conn.execute(_recompute_devices(name, width), {"bucket": b, "devices": devices})
                    report.devices[name] += len(devices)
            report.buckets[name] = len(whole)
    return report
