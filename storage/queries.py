"""The query layer used by the API and the alert engine.

The same functions answer on both backends: the hourly rollup has the same
relation name and columns whether it is a TimescaleDB continuous aggregate or
a PostgreSQL table the writer's refresh maintains.

Bucket semantics: buckets are aligned to ``BUCKET_ORIGIN`` (TimescaleDB's
``time_bucket`` default), and a query covers every whole bucket touching
``[start, end)``. That makes raw rows and rollups give the same answer
(up to floating-point rounding of averages), so ``series`` is free to serve
long ranges with whole-hour buckets from ``readings_1h``; buckets under an
hour read ``readings`` by its primary key (device, metric, time): no device
reports more than once a minute, so a per-device minute rollup would hold as
many rows (schema migration 9 dropped it). For the same reason a device that
samples hourly or less often keeps no hourly rollup on the PostgreSQL path
(migration 10): its hourly series is read from its raw rows, plus the rollup
rows retention folded in from raw rows it dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, LiteralString

from psycopg import sql

from storage.db import Conn
from storage.partitions import floor_time
from storage.schema import BUCKET_ORIGIN, ROLLUPS

Aggregate = Literal["avg", "min", "max", "sum", "count", "last"]
Source = Literal["auto", "raw", "readings_1h"]
GroupBy = Literal["district", "township", "kind", "status"]

MAX_BUCKETS = 100_000
RAW_MAX_RANGE = timedelta(hours=1)  # longer ranges are served from the rollup when the bucket allows

_RAW_AGG: dict[str, LiteralString] = {
    "avg": "avg(value)", "min": "min(value)", "max": "max(value)", "sum": "sum(value)",
    "count": "count(*)::float8",
    "last": "(array_agg(value ORDER BY time DESC))[1]",
}
_ROLLUP_AGG: dict[str, LiteralString] = {
    "avg": "sum(value_sum) / sum(value_count)", "min": "min(value_min)", "max": "max(value_max)",
    "sum": "sum(value_sum)",
    "count": "sum(value_count)::float8", "last": "(array_agg(last_value ORDER BY last_time DESC))[1]",
}


@dataclass(frozen=True, slots=True)
class LatestValue:
    device_id: str
    metric: str
    time: datetime
    value: float
    received_at: datetime


@dataclass(frozen=True, slots=True)
class Point:
    bucket: datetime
    value: float


@dataclass(frozen=True, slots=True)
class GroupCount:
    group: str
    total: int
    online: int
    offline: int


def covering(start: datetime, end: datetime, bucket: timedelta) -> tuple[datetime, datetime]:
    """The whole buckets touching ``[start, end)``."""
    lo = floor_time(start, bucket)
    hi = floor_time(end, bucket)
    return lo, hi if hi == end else hi + bucket


def choose_source(start: datetime, end: datetime, bucket: timedelta) -> Source:
    """Raw rows, or the coarsest rollup whose width divides the bucket (whole hours)."""
    if end - start <= RAW_MAX_RANGE:
        return "raw"
    for name, width in sorted(ROLLUPS.items(), key=lambda kv: kv[1], reverse=True):
        if bucket % width == timedelta(0):
            return name  # type: ignore[return-value]  # keys of ROLLUPS are Source names
    return "raw"


async def latest_per_device(
    conn: Conn, *, device_ids: Sequence[str] | None = None, metric: str | None = None,
    kind: str | None = None, district: str | None = None, township: str | None = None,
) -> list[LatestValue]:
    """Last value of every (device, metric), filtered; ordered by device and metric."""
    where: list[sql.Composable] = []
    params: list[object] = []
    if device_ids is not None:
        where.append(sql.SQL("l.device_id = ANY(%s)"))
        params.append(list(device_ids))
    if metric is not None:
        where.append(sql.SQL("l.metric = %s"))
        params.append(metric)
    for column, value in (("kind", kind), ("district", district), ("township", township)):
        if value is not None:
            where.append(sql.SQL("d.{} = %s").format(sql.Identifier(column)))
            params.append(value)
    join = sql.SQL("JOIN devices d USING (device_id)" if kind or district or township else "")
    query = sql.SQL(
        "SELECT l.device_id, l.metric, l.time, l.value, l.received_at FROM latest_readings l {join} "
        "WHERE {where} ORDER BY l.device_id, l.metric"
    ).format(join=join, where=sql.SQL(" AND ").join(where) if where else sql.SQL("true"))
    cur = await conn.execute(query, params)
    return [LatestValue(*row) for row in await cur.fetchall()]


async def series(
    conn: Conn, device_id: str, metric: str, start: datetime, end: datetime, bucket: timedelta,
    agg: Aggregate = "avg", *, source: Source = "auto",
) -> list[Point]:
    """One value per bucket with data, for the whole buckets touching ``[start, end)``."""
    if bucket <= timedelta(0) or end <= start:
        raise ValueError("bucket must be positive and end after start")
    if (end - start) / bucket > MAX_BUCKETS:
        raise ValueError(f"more than {MAX_BUCKETS} buckets requested")
    if agg not in _RAW_AGG:
        raise ValueError(f"unknown aggregate {agg!r}")
    lo, hi = covering(start, end, bucket)
    chosen = choose_source(start, end, bucket) if source == "auto" else source
    if chosen != "raw" and bucket % ROLLUPS[chosen] != timedelta(0):
        raise ValueError(f"{chosen} cannot serve {bucket} buckets")
    params = {"bucket": bucket, "device": device_id, "metric": metric, "lo": lo, "hi": hi}
    if chosen == "raw":
        query = sql.SQL(
            """SELECT date_bin(%(bucket)s, time, {origin}) AS b, {expr} FROM readings
               WHERE device_id = %(device)s AND metric = %(metric)s AND time >= %(lo)s AND time < %(hi)s
               GROUP BY 1 ORDER BY 1"""
        ).format(origin=sql.Literal(BUCKET_ORIGIN), expr=sql.SQL(_RAW_AGG[agg]))
    else:
        # Real-time union: rollup rows for clean buckets, raw rows for buckets still listed in
        # rollup_dirty (PostgreSQL path: not yet recomputed; always empty on TimescaleDB), or
        # for every bucket of a device without an hourly rollup (PostgreSQL path: its rollup
        # rows are only those retention folded in, from raw rows dropped since).
        query = sql.SQL(
            """SELECT date_bin(%(bucket)s, bucket, {origin}) AS b, {expr} FROM (
                   SELECT bucket, value_sum, value_count, value_min, value_max, last_time, last_value
                   FROM {rel} WHERE device_id = %(device)s AND metric = %(metric)s
                       AND bucket >= %(lo)s AND bucket < %(hi)s AND {clean}
                   UNION ALL
                   SELECT {raw_bucket}, {raw_parts} FROM readings
                   WHERE device_id = %(device)s AND metric = %(metric)s AND {raw_not_rolled}
                   GROUP BY 1) parts
               GROUP BY 1 ORDER BY 1"""
        ).format(clean=_clean(chosen, one_device=True), rel=sql.Identifier(chosen),
                 raw_bucket=_raw_bucket(chosen), raw_parts=sql.SQL(_RAW_PARTS),
                 raw_not_rolled=_raw_not_rolled(chosen), origin=sql.Literal(BUCKET_ORIGIN),
                 expr=sql.SQL(_ROLLUP_AGG[agg]))
    # Never a server-side prepared statement: a generic plan cannot prune by the time range or
    # size the real-time union (measured 3x slower than custom plans once psycopg prepares it).
    cur = await conn.execute(query, params, prepare=False)
    return [Point(row[0], float(row[1])) for row in await cur.fetchall()]


# Raw rows aggregated to the columns of a rollup row.
_RAW_PARTS = ("sum(value), count(*), min(value), max(value), max(time), "
              "(array_agg(value ORDER BY time DESC))[1]")


# The real-time union below reads rollup_dirty in sub-selects (init plans) of the same
# statement, hence under the same snapshot as the rollup and raw rows; no CTE, so the
# planner keeps parallel scans of large rollups.
def _dirty(rollup: str, what: LiteralString, one_device: bool) -> sql.Composed:
    """``what`` over the buckets of ``rollup`` in ``[%(lo)s, %(hi)s)`` still to be recomputed;
    with ``one_device``, those dirty for ``%(device)s``: an entry naming another device (late
    rows of a closed hour) leaves this device's rollup row of that bucket exact."""
    mine = sql.SQL(" AND (device_id IS NULL OR device_id = %(device)s)" if one_device else "")
    return sql.SQL(
        "(SELECT {what} FROM rollup_dirty"
        " WHERE rollup = {name} AND bucket >= %(lo)s AND bucket < %(hi)s{mine})"
    ).format(what=sql.SQL(what), name=sql.Literal(rollup), mine=mine)


def _clean(rollup: str, *, one_device: bool = False) -> sql.Composed:
    """A rollup row whose bucket is not dirty."""
    every = _dirty(rollup, "coalesce(array_agg(DISTINCT bucket), '{}')", one_device)
    return sql.SQL("bucket <> ALL ({}::timestamptz[])").format(every)  # the cast: an array, not a subquery


def _raw_bucket(rollup: str) -> sql.Composed:
    return sql.SQL("date_bin({w}, time, {origin})").format(
        w=sql.Literal(ROLLUPS[rollup]), origin=sql.Literal(BUCKET_ORIGIN))


def _raw_in_dirty(rollup: str) -> sql.Composed:
    """Raw rows of the dirty buckets, within a time range the index scans can use."""
    return sql.SQL("time >= {lo} AND time < {hi} + {w} AND {b} = ANY ({all}::timestamptz[])").format(
        lo=_dirty(rollup, "min(bucket)", False), hi=_dirty(rollup, "max(bucket)", False),
        w=sql.Literal(ROLLUPS[rollup]), b=_raw_bucket(rollup),
        all=_dirty(rollup, "array_agg(DISTINCT bucket)", False))


# A device without an hourly rollup (rollups_schema.hourly_rollup_class; NULL: not registered).
_NO_ROLLUP = sql.SQL("coalesce((SELECT NOT rollup_1h FROM devices WHERE device_id = %(device)s), false)")


def _raw_not_rolled(rollup: str) -> sql.Composed:
    """%(device)s's raw rows the rollup does not hold: all of ``[lo, hi)`` for a device without
    an hourly rollup, else those of its dirty buckets (``_raw_in_dirty``). The time bounds are
    init plans, so the primary key's range scan still uses them."""
    return sql.SQL(
        "time >= CASE WHEN {nr} THEN %(lo)s::timestamptz ELSE {dlo} END"
        " AND time < CASE WHEN {nr} THEN %(hi)s::timestamptz ELSE {dhi} + {w} END"
        " AND ({nr} OR {b} = ANY ({all}::timestamptz[]))"
    ).format(nr=_NO_ROLLUP, dlo=_dirty(rollup, "min(bucket)", True), dhi=_dirty(rollup, "max(bucket)", True),
             w=sql.Literal(ROLLUPS[rollup]), b=_raw_bucket(rollup),
             all=_dirty(rollup, "array_agg(DISTINCT bucket)", True))


async def device_counts(
    conn: Conn, group_by: GroupBy, *, now: datetime | None = None, offline_factor: float = 3.0,
) -> list[GroupCount]:
    """Active devices per district, township, kind or status, split online/offline.

    A device is online when last seen within ``offline_factor`` times its
    expected report interval; a device never seen is offline.
    """
    if group_by not in ("district", "township", "kind", "status"):
        raise ValueError(f"cannot group by {group_by!r}")
    group = (sql.SQL("CASE WHEN online THEN 'online' ELSE 'offline' END") if group_by == "status"
             else sql.Identifier(group_by))
    query = sql.SQL(
        """SELECT {g} AS grp, count(*), count(*) FILTER (WHERE online), count(*) FILTER (WHERE NOT online)
           FROM (SELECT d.district, d.township, d.kind,
                        coalesce(s.last_seen >= coalesce(%(now)s, now())
                                 - d.report_interval_s * %(factor)s * interval '1 second', false) AS online
                 FROM devices d LEFT JOIN device_state s USING (device_id) WHERE d.active) x
           GROUP BY 1 ORDER BY 1"""
    ).format(g=group)
    cur = await conn.execute(query, {"now": now, "factor": offline_factor})
    return [GroupCount(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in await cur.fetchall()]


async def reading_counts(
    conn: Conn, group_by: Literal["district", "township", "kind"], start: datetime, end: datetime,
    *, metric: str | None = None,
) -> dict[str, int]:
    """Readings received per district, township or kind over the whole hours touching ``[start, end)``.

    Served from the 1-hour rollup (raw rows for hours not yet recomputed, and for devices
    without an hourly rollup: a whole hour's raw rows are read for those, so long ranges cost
    in proportion); devices not in the registry are not counted.
    """
    if group_by not in ("district", "township", "kind"):
        raise ValueError(f"cannot group by {group_by!r}")
    lo, hi = covering(start, end, ROLLUPS["readings_1h"])
    query = sql.SQL(
        """SELECT grp, sum(n)::bigint FROM (
               SELECT d.{g} AS grp, sum(r.value_count) AS n
               FROM readings_1h r JOIN devices d USING (device_id)
               WHERE r.bucket >= %(lo)s AND r.bucket < %(hi)s AND {clean}
                 AND (%(metric)s::text IS NULL OR r.metric = %(metric)s)
               GROUP BY 1
               UNION ALL
               SELECT d.{g}, count(*) FROM readings r JOIN devices d USING (device_id)
               WHERE {raw_in_dirty} AND (%(metric)s::text IS NULL OR r.metric = %(metric)s)
               GROUP BY 1
               UNION ALL
               SELECT d.{g}, count(*) FROM readings r JOIN devices d USING (device_id)
               WHERE NOT d.rollup_1h AND r.time >= %(lo)s AND r.time < %(hi)s
                 AND {raw_b} <> ALL ({dirty}::timestamptz[])
                 AND (%(metric)s::text IS NULL OR r.metric = %(metric)s)
               GROUP BY 1) c
           GROUP BY 1 ORDER BY 1"""
    ).format(g=sql.Identifier(group_by), clean=_clean("readings_1h"),
             raw_in_dirty=_raw_in_dirty("readings_1h"), raw_b=_raw_bucket("readings_1h"),
             dirty=_dirty("readings_1h", "coalesce(array_agg(DISTINCT bucket), '{}')", False))
    cur = await conn.execute(query, {"lo": lo, "hi": hi, "metric": metric}, prepare=False)  # see series()
    return {str(r[0]): int(r[1]) for r in await cur.fetchall()}
