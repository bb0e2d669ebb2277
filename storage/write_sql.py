"""The writer's SQL: staging tables and the statements that move staged rows.

Each statement inserts staged rows with ``ON CONFLICT DO NOTHING`` and
feeds only the rows it actually inserted (``RETURNING``) to the rollups and
latest-state upserts in the same statement. A re-delivered row therefore
inserts nothing and adds nothing to a rollup; a late row lands at its real
time and is added to the rollup bucket of that time. Latest state is
replaced only by a newer time. Groups are upserted in key order so two
writers touching the same rows cannot deadlock in practice (and a deadlock
would be retried).
"""

from __future__ import annotations

from typing import LiteralString

from psycopg import sql

from storage.db import Query
from storage.schema import BUCKET_ORIGIN, ROLLUPS

READINGS_STAGE = sql.Identifier("readings_stage")
STATUS_STAGE = sql.Identifier("status_stage")
HEALTH_STAGE = sql.Identifier("health_stage")

CREATE_STAGES = sql.SQL(
    """CREATE TEMP TABLE IF NOT EXISTS {r} (
           device_id text, metric text, time_us bigint, value double precision,
           received_us bigint, seq bigint, quality smallint) ON COMMIT DELETE ROWS;
       CREATE TEMP TABLE IF NOT EXISTS {s} (
           device_id text, connector integer, time_us bigint, state text,
           error_code text, session_id text) ON COMMIT DELETE ROWS;
       CREATE TEMP TABLE IF NOT EXISTS {h} (
           device_id text, time_us bigint, rsrp_dbm real, sinr_db real,
           ce_level smallint, battery_v real) ON COMMIT DELETE ROWS"""
).format(r=READINGS_STAGE, s=STATUS_STAGE, h=HEALTH_STAGE)

COPY_READINGS = sql.SQL(
    "COPY {} (device_id, metric, time_us, value, received_us, seq, quality) FROM STDIN (FORMAT BINARY)"
).format(READINGS_STAGE)
READINGS_TYPES = ["text", "text", "int8", "float8", "int8", "int8", "int2"]

COPY_STATUS = sql.SQL(
    "COPY {} (device_id, connector, time_us, state, error_code, session_id) FROM STDIN (FORMAT BINARY)"
).format(STATUS_STAGE)
STATUS_TYPES = ["text", "int4", "int8", "text", "text", "text"]

COPY_HEALTH = sql.SQL(
    "COPY {} (device_id, time_us, rsrp_dbm, sinr_db, ce_level, battery_v) FROM STDIN (FORMAT BINARY)"
).format(HEALTH_STAGE)
HEALTH_TYPES = ["text", "int8", "float4", "float4", "int2", "float4"]


def _ts(column: LiteralString) -> Query:
    """Integer microseconds since the epoch -> timestamptz, without a Python datetime per row."""
    return sql.SQL("timestamptz 'epoch' + {} * interval '1 microsecond'").format(sql.Identifier(column))


_ROLLUP_UPSERT = """{cte} AS (
    INSERT INTO {rollup} AS r (device_id, metric, bucket, value_sum, value_count,
                               value_min, value_max, last_time, last_value)
    SELECT device_id, metric, date_bin({width}, time, {origin}) AS bucket,
           sum(value), count(*), min(value), max(value), max(time),
           (array_agg(value ORDER BY time DESC))[1]
    FROM ins GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (device_id, metric, bucket) DO UPDATE SET
        value_sum = r.value_sum + excluded.value_sum,
        value_count = r.value_count + excluded.value_count,
        value_min = least(r.value_min, excluded.value_min),
        value_max = greatest(r.value_max, excluded.value_max),
        last_value = CASE WHEN excluded.last_time > r.last_time
                          THEN excluded.last_value ELSE r.last_value END,
        last_time = greatest(r.last_time, excluded.last_time))"""


_TAKE_STAGED = sql.SQL(
    """INSERT INTO readings (device_id, metric, time, value, received_at, seq, quality)
       SELECT device_id, metric, {t}, value, {rt}, seq, quality FROM {stage}"""
).format(t=_ts("time_us"), rt=_ts("received_us"), stage=READINGS_STAGE)

# Fast path, run in a savepoint: a plain insert (no conflict arbitration) of every staged row.
# A unique violation means some rows are already stored: roll back to the savepoint and use
# ``readings_statement(fast=False)``, which skips them.
READINGS_FAST_INSERT = _TAKE_STAGED


def readings_statement(*, fast: bool, with_rollups: bool) -> sql.Composed:
    """Upsert latest values (and rollups) from the rows inserted; yields the inserted count.

    ``fast``: every staged row was just inserted by ``READINGS_FAST_INSERT``, so they are
    read back from the staging table. Otherwise this statement inserts them itself with
    ``ON CONFLICT DO NOTHING`` and only the rows actually inserted feed the upserts.
    """
    if fast:
        source = sql.SQL(
            "ins AS (SELECT device_id, metric, {t} AS time, value, {rt} AS received_at FROM {stage})"
        ).format(t=_ts("time_us"), rt=_ts("received_us"), stage=READINGS_STAGE)
    else:
        source = sql.SQL(
            """ins AS ({take} ON CONFLICT DO NOTHING
                RETURNING device_id, metric, time, value, received_at)"""
        ).format(take=_TAKE_STAGED)
    ctes: list[sql.Composable] = [
        source,
        sql.SQL(
            """latest AS (
            INSERT INTO latest_readings AS l (device_id, metric, time, value, received_at)
            SELECT DISTINCT ON (device_id, metric) device_id, metric, time, value, received_at
            FROM ins ORDER BY device_id, metric, time DESC
            ON CONFLICT (device_id, metric) DO UPDATE SET
                time = excluded.time, value = excluded.value, received_at = excluded.received_at
            WHERE l.time < excluded.time)"""
        ),
    ]
    if with_rollups:
        for name, width in ROLLUPS.items():
            ctes.append(sql.SQL(_ROLLUP_UPSERT).format(
                cte=sql.Identifier(f"up_{name}"), rollup=sql.Identifier(name),
                width=sql.Literal(width), origin=sql.Literal(BUCKET_ORIGIN)))
    return sql.SQL("WITH {} SELECT count(*) FROM ins").format(sql.SQL(",\n").join(ctes))


STATUS_STATEMENT = sql.SQL(
    """WITH ins AS (
        INSERT INTO charger_status (device_id, connector, time, state, error_code, session_id)
        SELECT device_id, connector, {t}, state, error_code, session_id FROM {stage}
        ON CONFLICT DO NOTHING
        RETURNING device_id, connector, time, state, error_code, session_id),
    conn AS (
        INSERT INTO charger_connectors AS c (device_id, connector, time, state, error_code, session_id)
        SELECT DISTINCT ON (device_id, connector) device_id, connector, time, state, error_code, session_id
        FROM ins ORDER BY device_id, connector, time DESC
        ON CONFLICT (device_id, connector) DO UPDATE SET time = excluded.time,
            state = excluded.state, error_code = excluded.error_code, session_id = excluded.session_id
        WHERE c.time < excluded.time),
    sess AS (
        INSERT INTO charger_sessions AS s (device_id, session_id, connector, started_at, last_at, last_state)
        SELECT device_id, session_id, (array_agg(connector ORDER BY time DESC))[1],
               min(time), max(time), (array_agg(state ORDER BY time DESC))[1]
        FROM ins WHERE session_id <> '' GROUP BY device_id, session_id ORDER BY 1, 2
        ON CONFLICT (device_id, session_id) DO UPDATE SET
            started_at = least(s.started_at, excluded.started_at),
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
