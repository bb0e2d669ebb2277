"""The writer's SQL: the fast COPY, staging tables and the statements that move staged rows.

Fast path (every row new): readings are COPYed straight into ``readings``
inside a savepoint; latest state is upserted from a stage holding one row
per (device, metric) — the newest of the batch, reduced in Python — and the
touched rollup buckets are noted in ``rollup_dirty``. Slow path (a
re-delivery: the COPY met the primary key): the savepoint is rolled back,
the rows are COPYed into a stage and inserted with ``ON CONFLICT DO
NOTHING``; only the rows actually inserted (``RETURNING``) feed latest state
and the dirty buckets. A re-delivered row therefore changes nothing, and a
late row lands at its real time and dirties the buckets of that time.

Rollups (PostgreSQL path) are not touched here: ``storage.rollups`` recomputes
dirty buckets from raw rows in the background, and ``storage.queries`` reads
raw rows for buckets still dirty, so answers stay exact.

Times of readings travel as ``int8`` in binary COPY: PostgreSQL's binary
``timestamptz`` *is* a big-endian int64 of microseconds since 2000-01-01 UTC,
so ``microseconds since the Unix epoch - PG_EPOCH_US`` needs no Python
datetime and no conversion in SQL. Groups are upserted in key order so two
writers touching the same rows cannot deadlock in practice (and a deadlock
would be retried).
"""

from __future__ import annotations

from typing import LiteralString

from psycopg import sql

from storage.db import Query
from storage.schema import BUCKET_ORIGIN, ROLLUPS

# 2000-01-01 00:00 UTC in Unix microseconds: the zero of PostgreSQL's binary timestamptz.
PG_EPOCH_US = 946_684_800 * 1_000_000

READINGS_STAGE = sql.Identifier("readings_stage")
LATEST_STAGE = sql.Identifier("latest_stage")
STATUS_STAGE = sql.Identifier("status_stage")
HEALTH_STAGE = sql.Identifier("health_stage")

CREATE_STAGES = sql.SQL(
    """CREATE TEMP TABLE IF NOT EXISTS {r} (
           device_id text, metric text, time timestamptz, value double precision,
           received_at timestamptz, seq bigint, quality smallint) ON COMMIT DELETE ROWS;
       CREATE TEMP TABLE IF NOT EXISTS {l} (
           device_id text, metric text, time timestamptz, value double precision,
           received_at timestamptz) ON COMMIT DELETE ROWS;
       CREATE TEMP TABLE IF NOT EXISTS {s} (
           device_id text, connector integer, time_us bigint, state text,
           error_code text, session_id text, info text) ON COMMIT DELETE ROWS;
       CREATE TEMP TABLE IF NOT EXISTS {h} (
           device_id text, time_us bigint, rsrp_dbm real, sinr_db real,
           ce_level smallint, battery_v real) ON COMMIT DELETE ROWS"""
).format(r=READINGS_STAGE, l=LATEST_STAGE, s=STATUS_STAGE, h=HEALTH_STAGE)

_READING_COLUMNS = sql.SQL("device_id, metric, time, value, received_at, seq, quality")
# time and received_at are sent as int8: see the module docstring.
READINGS_TYPES = ["text", "text", "int8", "float8", "int8", "int8", "int2"]
COPY_READINGS = sql.SQL("COPY readings ({}) FROM STDIN (FORMAT BINARY)").format(_READING_COLUMNS)
COPY_READINGS_STAGE = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    READINGS_STAGE, _READING_COLUMNS)
LATEST_TYPES = ["text", "text", "int8", "float8", "int8"]
COPY_LATEST_STAGE = sql.SQL(
    "COPY {} (device_id, metric, time, value, received_at) FROM STDIN (FORMAT BINARY)").format(LATEST_STAGE)

COPY_STATUS = sql.SQL(
    "COPY {} (device_id, connector, time_us, state, error_code, session_id, info)"
    " FROM STDIN (FORMAT BINARY)"
).format(STATUS_STAGE)
STATUS_TYPES = ["text", "int4", "int8", "text", "text", "text", "text"]

COPY_HEALTH = sql.SQL(
    "COPY {} (device_id, time_us, rsrp_dbm, sinr_db, ce_level, battery_v) FROM STDIN (FORMAT BINARY)"
).format(HEALTH_STAGE)
HEALTH_TYPES = ["text", "int8", "float4", "float4", "int2", "float4"]


def _ts(column: LiteralString) -> Query:
    """Integer microseconds since the epoch -> timestamptz, without a Python datetime per row."""
    return sql.SQL("timestamptz 'epoch' + {} * interval '1 microsecond'").format(sql.Identifier(column))


_LATEST_UPSERT = """INSERT INTO latest_readings AS l (device_id, metric, time, value, received_at)
    SELECT DISTINCT ON (device_id, metric) device_id, metric, time, value, received_at
    FROM {source} ORDER BY device_id, metric, time DESC
    ON CONFLICT (device_id, metric) DO UPDATE SET
        time = excluded.time, value = excluded.value, received_at = excluded.received_at
    WHERE l.time < excluded.time"""

# Fast path: the stage already holds one row per (device, metric); DISTINCT ON is then a no-op sort.
LATEST_FROM_STAGE = sql.SQL(_LATEST_UPSERT).format(source=LATEST_STAGE)

# Fast path: the buckets (of every rollup) the batch touched, computed by the sink.
NOTE_DIRTY = sql.SQL(
    """INSERT INTO rollup_dirty (rollup, bucket)
       SELECT * FROM unnest(%s::text[], %s::timestamptz[])""")


def slow_readings_statement(*, note_dirty: bool) -> sql.Composed:
    """Insert-or-ignore the staged readings; latest state (and dirty buckets) from the rows inserted.

    Yields the number of rows inserted.
    """
    ctes: list[sql.Composable] = [
        sql.SQL(
            """ins AS (INSERT INTO readings ({cols}) SELECT {cols} FROM {stage}
                ON CONFLICT DO NOTHING RETURNING device_id, metric, time, value, received_at)"""
        ).format(cols=_READING_COLUMNS, stage=READINGS_STAGE),
        sql.SQL("latest AS ({})").format(sql.SQL(_LATEST_UPSERT).format(source=sql.Identifier("ins"))),
    ]
    if note_dirty:
        for name, width in ROLLUPS.items():
            ctes.append(sql.SQL(
                """{cte} AS (INSERT INTO rollup_dirty (rollup, bucket)
                   SELECT DISTINCT {name}, date_bin({width}, time, {origin}) FROM ins)"""
            ).format(cte=sql.Identifier(f"dirty_{name}"), name=sql.Literal(name),
                     width=sql.Literal(width), origin=sql.Literal(BUCKET_ORIGIN)))
    return sql.SQL("WITH {} SELECT count(*) FROM ins").format(sql.SQL(",\n").join(ctes))


STATUS_STATEMENT = sql.SQL(
    """WITH ins AS (
        INSERT INTO charger_status (device_id, connector, time, state, error_code, session_id, info)
        SELECT device_id, connector, {t}, state, error_code, session_id, info FROM {stage}
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
               coalesce(min(substr(info, 7)) FILTER (WHERE info LIKE 'start:%%'), ''),
               coalesce(min(substr(info, 6)) FILTER (WHERE info LIKE 'stop:%%'), '')
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
).format(t=_ts("time_us"), stage=STATUS_STAGE)

HEALTH_STATEMENT = sql.SQL(
    """INSERT INTO device_health (device_id, time, rsrp_dbm, sinr_db, ce_level, battery_v)
       SELECT device_id, {t}, rsrp_dbm, sinr_db, ce_level, battery_v FROM {stage}
       ON CONFLICT DO NOTHING"""
).format(t=_ts("time_us"), stage=HEALTH_STAGE)

SEEN_STATEMENT = sql.SQL(
    """INSERT INTO device_state AS d (device_id, last_seen, last_time)
       SELECT device_id, {seen}, {last} FROM unnest(%s::text[], %s::bigint[], %s::bigint[])
            AS u (device_id, seen_us, last_us)
       ORDER BY device_id
       ON CONFLICT (device_id) DO UPDATE SET
           last_seen = greatest(d.last_seen, excluded.last_seen),
           last_time = greatest(d.last_time, excluded.last_time)
       WHERE d.last_seen < excluded.last_seen OR d.last_time IS NULL
          OR d.last_time < excluded.last_time"""
).format(seen=_ts("seen_us"), last=_ts("last_us"))
