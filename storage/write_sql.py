"""The writer's SQL: the fast COPY, the re-delivery stage, and the state and status statements.

Fast path (every row new): readings are COPYed straight into ``readings``;
with the commit, the open hours they touch are noted in ``rollup_dirty`` and
the readings of closed hours merged into the hourly rollup (``NOTE_OPEN``,
``ROLLUP_MERGE``). Slow path (a re-delivery: the COPY met the primary key):
the transaction is rolled back, the rows are COPYed into a temporary stage
and inserted with ``ON CONFLICT DO NOTHING``; only the rows actually inserted
(``RETURNING``) reach the rollup. A re-delivered row therefore changes
nothing, and a late row lands at its real time, in the rollup bucket of that
time. ``device_state`` is updated at the writer's checkpoints
(``ReadingsSink.flush``) from one ``device_batch_state`` record per device
(migration 4): last seen, and the newest reading per metric of every write
since the last flush, sent as one array parameter. That update only ever
moves a value forward in time (an older or equal time never replaces a
stored one), so states derived again from re-delivered batches change
nothing.

On TimescaleDB the rollup is a continuous aggregate and the writer does not touch it.

Readings arrive as binary COPY data, and device states as one binary array
of records, built in Python (``storage.write_rows``, ``storage.latest_state``,
``storage.copy_binary``) in the column order of ``COPY_READINGS`` and of
``device_batch_state``. Their times are int64: PostgreSQL's binary
``timestamptz`` *is* a big-endian int64 of microseconds since 2000-01-01 UTC,
so ``microseconds since the Unix epoch - latest_state.PG_EPOCH_US`` needs no
Python datetime and no conversion in SQL.
Groups are upserted in key order so two writers touching the same rows
cannot deadlock in practice (and a deadlock would be retried); Kafka's keying
by device keeps two writers off the same device anyway, except across a
rebalance.
"""

from __future__ import annotations

from typing import LiteralString

from psycopg import sql

from storage.db import Query
from storage.schema import BUCKET_ORIGIN, ROLLUPS

ROLLUP = "readings_1h"  # the one rollup the PostgreSQL path keeps (migration 9)

READINGS_STAGE = sql.Identifier("readings_stage")

# The one temporary table: re-delivered readings are staged there before insert-or-ignore.
# Everything else comes as array parameters: a commit that follows any use of a temporary
# table truncates every ON COMMIT DELETE ROWS table of the session (about 0.4 ms each),
# so the fast path touches none, and a connection only gets this one once it needs it.
CREATE_READINGS_STAGE = sql.SQL(
    """CREATE TEMP TABLE IF NOT EXISTS {r} (
           device_id text, metric text, time timestamptz, value double precision,
           received_at timestamptz, seq bigint, quality smallint) ON COMMIT DELETE ROWS"""
).format(r=READINGS_STAGE)

_READING_COLUMNS = sql.SQL("device_id, metric, time, value, received_at, seq, quality")
# Rows arrive as binary COPY data built by storage.write_rows (time and received_at as int8
# microseconds: see the module docstring); the column order here is the order it writes.
COPY_READINGS = sql.SQL("COPY readings ({}) FROM STDIN (FORMAT BINARY)").format(_READING_COLUMNS)
COPY_READINGS_STAGE = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    READINGS_STAGE, _READING_COLUMNS)
# Statuses and health come as one array parameter per column, in this order (write_rows).
_STATUS_INPUT = sql.SQL(
    """unnest(%s::text[], %s::int[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[])
       AS s (device_id, connector, time_us, state, error_code, session_id, info)""")
_HEALTH_INPUT = sql.SQL(
    """unnest(%s::text[], %s::bigint[], %s::real[], %s::real[], %s::smallint[], %s::real[])
       AS s (device_id, time_us, rsrp_dbm, sinr_db, ce_level, battery_v)""")


def _ts(column: LiteralString) -> Query:
    """Integer microseconds since the epoch -> timestamptz, without a Python datetime per row."""
    return sql.SQL("timestamptz 'epoch' + {} * interval '1 microsecond'").format(sql.Identifier(column))


# The hourly rollup on the PostgreSQL path (``storage.rollup_delta``): the hours still open
# that a write touched are noted whole in rollup_dirty (recomputed from raw rows once closed);
# readings of hours already closed are grouped by (device, metric, hour) and added to what the
# rollup holds, in the write's transaction. Sums and counts add, minimum and maximum are kept,
# the newest value wins by time (two stored readings of one device and metric never share a
# time: the primary key). The fast path sends its late readings as arrays; the slow path uses
# the rows its insert returned, so a re-delivered reading adds nothing. In key order, so two
# writers cannot deadlock in practice (Kafka's keying by device keeps them apart anyway).
NOTE_OPEN = sql.SQL("INSERT INTO rollup_dirty (rollup, bucket) SELECT {}, unnest(%s::timestamptz[])").format(
    sql.Literal(ROLLUP))
_ROLLUP_COLUMNS = sql.SQL(
    "device_id, metric, bucket, value_sum, value_count, value_min, value_max, last_time, last_value")
_ROLLUP_ON_CONFLICT = sql.SQL(
    """ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
           value_sum = r.value_sum + excluded.value_sum,
           value_count = r.value_count + excluded.value_count,
           value_min = least(r.value_min, excluded.value_min),
           value_max = greatest(r.value_max, excluded.value_max),
           last_time = greatest(r.last_time, excluded.last_time),
           last_value = CASE WHEN excluded.last_time > r.last_time
                             THEN excluded.last_value ELSE r.last_value END""")


def _rollup_merge(source: sql.Composable) -> sql.Composed:
    """Merge the rows of ``source`` (device_id, metric, time, value) into the hourly rollup."""
    return sql.SQL(
        """INSERT INTO {rollup} AS r ({cols})
           SELECT device_id, metric, date_bin({width}, time, {origin}), sum(value), count(*),
                  min(value), max(value), max(time), (array_agg(value ORDER BY time DESC))[1]
           FROM {source} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
           {on_conflict}"""
    ).format(rollup=sql.Identifier(ROLLUP), cols=_ROLLUP_COLUMNS, width=sql.Literal(ROLLUPS[ROLLUP]),
             origin=sql.Literal(BUCKET_ORIGIN), source=source, on_conflict=_ROLLUP_ON_CONFLICT)


# Rows of devices that keep a per-device hourly rollup (``rollups_schema.hourly_rollup_class``):
# the others' hourly series is read from raw rows until retention folds them in (COMPACT).
ROLLUP_CLASS = sql.SQL("SELECT device_id, rollup_1h FROM devices WHERE device_id = ANY(%s)")
HAS_ROLLUP = sql.SQL("device_id NOT IN (SELECT device_id FROM devices WHERE NOT rollup_1h)")


def compact_statement(partition: str) -> sql.Composed:
    """Fold the raw rows of devices without an hourly rollup in ``partition`` (about to be
    dropped by retention) into the rollup, so their long series outlive their raw rows."""
    return _rollup_merge(sql.SQL(
        "(SELECT device_id, metric, time, value FROM {} WHERE NOT ({})) AS expiring").format(
            sql.Identifier(partition), HAS_ROLLUP))


ROLLUP_MERGE = _rollup_merge(sql.SQL(
    "unnest(%b::text[], %b::text[], %b::timestamptz[], %b::float8[]) AS u (device_id, metric, time, value)"))


def slow_readings_statement(*, rollup: bool) -> sql.Composed:
    """Insert-or-ignore the staged readings; feed what was inserted to the hourly rollup
    (``rollup``: the PostgreSQL path): open hours (by the server's clock here) noted, late
    readings merged.

    Yields the number of rows inserted, and of conflicting duplicates: staged rows whose
    key (device, metric, time) is already stored with another value, or comes twice in
    the stage with other values. The row stored first wins (it is never overwritten);
    the count is only reported (the writer's ``readings_conflicting`` metric).
    """
    ctes: list[sql.Composable] = [
        sql.SQL(
            """ins AS (INSERT INTO readings ({cols}) SELECT {cols} FROM {stage}
                ON CONFLICT DO NOTHING RETURNING device_id, metric, time, value)"""
        ).format(cols=_READING_COLUMNS, stage=READINGS_STAGE),
    ]
    if rollup:
        width, origin = sql.Literal(ROLLUPS[ROLLUP]), sql.Literal(BUCKET_ORIGIN)
        ctes.append(sql.SQL(
            """opened AS (INSERT INTO rollup_dirty (rollup, bucket)
                SELECT DISTINCT {name}, b FROM (SELECT date_bin({width}, time, {origin}) AS b FROM ins) i
                WHERE b + {width} > now())"""
        ).format(name=sql.Literal(ROLLUP), width=width, origin=origin))
        ctes.append(sql.SQL("merged AS ({})").format(_rollup_merge(sql.SQL(
            "(SELECT * FROM ins WHERE date_bin({width}, time, {origin}) + {width} <= now() AND {has}) AS late"
        ).format(width=width, origin=origin, has=HAS_ROLLUP))))
    # One primary-key probe per staged row (LATERAL .. LIMIT 1): the stage, a temporary table,
    # has no statistics, and a plain join may hash-join it with every partition of readings.
    conflicting = sql.SQL(
        """(SELECT count(*) FROM {stage} s, LATERAL (
                SELECT r.value FROM readings r
                WHERE r.device_id = s.device_id AND r.metric = s.metric AND r.time = s.time LIMIT 1) r
             WHERE r.value IS DISTINCT FROM s.value)
           + (SELECT coalesce(sum(n - 1), 0) FROM (
                SELECT count(DISTINCT value) AS n FROM {stage} GROUP BY device_id, metric, time
                HAVING count(DISTINCT value) > 1) AS twice)"""
    ).format(stage=READINGS_STAGE)
    return sql.SQL("WITH {} SELECT (SELECT count(*) FROM ins), {}").format(
        sql.SQL(",\n").join(ctes), conflicting)


STATUS_STATEMENT = sql.SQL(
    """WITH ins AS (
        INSERT INTO charger_status (device_id, connector, time, state, error_code, session_id, info)
        SELECT device_id, connector, {t}, state, error_code, session_id, info FROM {input}
        ON CONFLICT DO NOTHING
        RETURNING device_id, connector, time, state, error_code, session_id, info),
    conn AS (
        INSERT INTO charger_connectors AS c (device_id, connector, time, state, error_code, session_id)
        SELECT DISTINCT ON (device_id, connector) device_id, connector, time, state, error_code, session_id
        FROM ins ORDER BY device_id, connector, time DESC
        ON CONFLICT (device_id, connector) DO UPDATE SET time = excluded.time,
            state = excluded.state, error_code = excluded.error_code, session_id = excluded.session_id
        WHERE c.time < excluded.time),
    sess AS (
        INSERT INTO charger_sessions AS s (device_id, session_id, connector, started_at, last_at,
                                           last_state, start_reason, stop_reason)
        SELECT device_id, session_id, (array_agg(connector ORDER BY time DESC))[1],
               min(time), max(time), (array_agg(state ORDER BY time DESC))[1],
               coalesce(min(substr(info, 7)) FILTER (WHERE starts_with(info, 'start:')), ''),
               coalesce(min(substr(info, 6)) FILTER (WHERE starts_with(info, 'stop:')), '')
        FROM ins WHERE session_id <> '' GROUP BY device_id, session_id ORDER BY 1, 2
        ON CONFLICT (device_id, session_id) DO UPDATE SET
            started_at = least(s.started_at, excluded.started_at),
            start_reason = CASE WHEN excluded.start_reason <> ''
                                THEN excluded.start_reason ELSE s.start_reason END,
            stop_reason = CASE WHEN excluded.stop_reason <> ''
                               THEN excluded.stop_reason ELSE s.stop_reason END,
            connector = CASE WHEN excluded.last_at > s.last_at
                             THEN excluded.connector ELSE s.connector END,
            last_state = CASE WHEN excluded.last_at > s.last_at
                              THEN excluded.last_state ELSE s.last_state END,
            last_at = greatest(s.last_at, excluded.last_at))
    SELECT count(*) FROM ins"""
).format(t=_ts("time_us"), input=_STATUS_INPUT)

HEALTH_STATEMENT = sql.SQL(
    """INSERT INTO device_health (device_id, time, rsrp_dbm, sinr_db, ce_level, battery_v)
       SELECT device_id, {t}, rsrp_dbm, sinr_db, ce_level, battery_v FROM {input}
       ON CONFLICT DO NOTHING"""
).format(t=_ts("time_us"), input=_HEALTH_INPUT)

# One row per device heard from since the last flush: last_seen/last_time as in
# device_state, and its newest reading per metric as arrays sorted by metric (empty without
# readings) with the oldest (first_time) and newest (latest_time) of those values' times.
# Devices the sink has not seen yet are inserted first (DEVICE_NEW); then one update merges
# the input into device_state. Where the input supersedes what is stored (no readings,
# nothing stored yet, or the same metrics all newer than anything stored: the common case
# by far) its arrays replace the stored ones; otherwise ``latest_merge`` (migration 3) keeps
# the newer value per metric. Rows the input would not change (a re-delivery) are skipped,
# and a value is only ever replaced by a strictly newer one.
# The input arrives as one binary parameter, an array of ``device_batch_state`` records
# (schema migration 4) built by ``latest_state``; sent as it is (copy_binary.Raw).
_DEVICE_INPUT = sql.SQL("unnest(%(states)b::device_batch_state[]) s")

DEVICE_NEW = sql.SQL(
    """INSERT INTO device_state (device_id, last_seen, last_time, latest_metrics, latest_times,
                                 latest_values, latest_received, latest_time)
       SELECT s.device_id, s.last_seen, s.last_time, s.metrics, s.times, s.vals, s.received, s.latest_time
       FROM {input}
       WHERE NOT EXISTS (SELECT FROM device_state d WHERE d.device_id = s.device_id)
       ORDER BY s.device_id
       ON CONFLICT (device_id) DO NOTHING"""
).format(input=_DEVICE_INPUT)

_SUPERSEDES = """(s.first_time IS NULL OR d.latest_time IS NULL
                  OR (s.first_time > d.latest_time AND s.metrics = d.latest_metrics))"""
_MERGED = """(latest_merge(d.latest_metrics, d.latest_times, d.latest_values, d.latest_received,
                           s.metrics, s.times, s.vals, s.received))"""


# The merge branch calls latest_merge once per array column (four times per merged row):
# computing it once needs a sub-select per row, which the replace branch, the common one,
# would then pay too. Simulated fleets send one set of metrics per kind, so merges are rare.
def _latest_column(column: LiteralString, stage_column: LiteralString, field: LiteralString) -> LiteralString:
    return (column + " = CASE WHEN s.first_time IS NULL THEN d." + column
            + " WHEN " + _SUPERSEDES + " THEN s." + stage_column
            + " ELSE " + _MERGED + "." + field + " END")


DEVICE_UPDATE = sql.SQL(
    """UPDATE device_state d SET
           last_seen = greatest(d.last_seen, s.last_seen),
           last_time = greatest(d.last_time, s.last_time),
           latest_time = greatest(d.latest_time, s.latest_time),
           """ + _latest_column("latest_metrics", "metrics", "metrics") + """,
           """ + _latest_column("latest_times", "times", "times") + """,
           """ + _latest_column("latest_values", "vals", "vals") + """,
           """ + _latest_column("latest_received", "received", "received") + """
       FROM {input}
       WHERE d.device_id = s.device_id
         AND (s.last_seen > d.last_seen OR s.last_time > d.last_time
              OR (d.last_time IS NULL AND s.last_time IS NOT NULL)
              OR (s.first_time IS NOT NULL AND (d.latest_time IS NULL OR s.first_time > d.latest_time))
              OR (s.first_time IS NOT NULL
                  -- a re-delivery carries the very times stored: skip the function for it
                  AND NOT (s.times = d.latest_times AND s.metrics = d.latest_metrics)
                  AND latest_has_newer(d.latest_metrics, d.latest_times, s.metrics, s.times)))"""
).format(input=_DEVICE_INPUT)

# The input is the devices heard from since the last flush, against up to millions of
# devices: an index lookup per row, never a scan of device_state (a prepared, generic plan
# cannot see the array's size). Sent before the update, in the same round trip (a pipeline).
DEVICE_SETTINGS = sql.SQL(
    "SELECT set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)")
