"""The schema's DDL, per backend.

Both backends expose the same relations with the same columns, so the query
layer needs no branches:

- ``readings``, ``charger_status``, ``device_health``: time series, narrow
  (one row per value; see README for the measurement behind the choice).
  TimescaleDB: hypertables, compressed and retained by policy. PostgreSQL:
  range-partitioned by ``time``, partitions made ahead and on demand and
  dropped by retention (``storage.partitions``).
- ``readings_1h``: per-device hourly rollup with ``value_sum``,
  ``value_count``, ``value_min``, ``value_max``, ``last_time``,
  ``last_value``. TimescaleDB: a continuous aggregate with real-time
  aggregation. PostgreSQL: a table; the writer notes the open hours its
  readings touch in ``rollup_dirty`` (recomputed from raw rows by
  ``storage.rollups`` once closed, read raw until then) and merges late
  readings in its own transaction (``storage.rollup_delta``).
  Migration 2 also made ``readings_1m``; migration 9 dropped it (series with
  buckets under an hour read ``readings`` by its primary key).
- ``device_state``, ``charger_connectors``, ``charger_sessions``: current
  state, changed only by newer rows. Tables updated in place get
  ``fillfactor = 70`` so the updates stay HOT. Since migration 3 the latest
  value of each metric lives in ``device_state`` (one row per device, see
  ``DEVICE_LATEST``); ``latest_readings`` is a view over it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal, LiteralString

from psycopg import sql

from storage.db import Query

Backend = Literal["timescaledb", "postgresql"]

TIMESCALE: Backend = "timescaledb"
POSTGRES: Backend = "postgresql"

# Bucket origin shared by date_bin (PostgreSQL) and time_bucket (TimescaleDB's default).
BUCKET_ORIGIN = "2000-01-03 00:00:00+00"

TIME_SERIES_TABLES = ("readings", "charger_status", "device_health")
# The rollups that exist now (migration 9 dropped the per-device 1-minute one: no profile
# reports more than once a minute, so it held as many rows as readings; see storage/README.md).
ROLLUPS = {"readings_1h": timedelta(hours=1)}

_TIME_SERIES_DDL: dict[str, LiteralString] = {
    "readings": """CREATE TABLE readings (
            device_id   text             NOT NULL,
            metric      text             NOT NULL,
            time        timestamptz      NOT NULL,
            value       double precision NOT NULL,
            received_at timestamptz      NOT NULL,
            seq         bigint           NOT NULL DEFAULT -1,
            quality     smallint         NOT NULL DEFAULT 0,
            PRIMARY KEY (device_id, metric, time))""",
    "charger_status": """CREATE TABLE charger_status (
            device_id   text        NOT NULL,
            connector   integer     NOT NULL,
            time        timestamptz NOT NULL,
            state       text        NOT NULL,
            error_code  text        NOT NULL,
            session_id  text        NOT NULL,
            info        text        NOT NULL DEFAULT '',
            PRIMARY KEY (device_id, connector, time))""",
    "device_health": """CREATE TABLE device_health (
            device_id   text        NOT NULL,
            time        timestamptz NOT NULL,
            rsrp_dbm    real,
            sinr_db     real,
            ce_level    smallint,
            battery_v   real,
            PRIMARY KEY (device_id, time))""",
}

_SEGMENT_ORDER = {
    "readings": ("device_id", "metric, time DESC"),
    "charger_status": ("device_id", "connector, time DESC"),
    "device_health": ("device_id", "time DESC"),
}

REGISTRY_AND_STATE: tuple[LiteralString, ...] = (
    """CREATE TABLE schema_meta (key text PRIMARY KEY, value text NOT NULL)""",
    """CREATE TABLE sites (
            site_id   text PRIMARY KEY,
            kind      text NOT NULL,
            name      text NOT NULL,
            township  text NOT NULL,
            district  text NOT NULL,
            lat       double precision,
            lon       double precision,
            updated_at timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE devices (
            device_id         text PRIMARY KEY,
            kind              text NOT NULL,
            profile           text NOT NULL,
            network           text NOT NULL,
            site_id           text REFERENCES sites (site_id),
            township          text NOT NULL,
            district          text NOT NULL,
            lat               double precision,
            lon               double precision,
            report_interval_s double precision NOT NULL CHECK (report_interval_s > 0),
            credential_hash   text,
            metadata          jsonb NOT NULL DEFAULT '{}',
            active            boolean NOT NULL DEFAULT true,
            updated_at        timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX devices_district ON devices (district)",
    "CREATE INDEX devices_township ON devices (township)",
    "CREATE INDEX devices_kind ON devices (kind)",
    """CREATE TABLE latest_readings (
            device_id   text             NOT NULL,
            metric      text             NOT NULL,
            time        timestamptz      NOT NULL,
            value       double precision NOT NULL,
            received_at timestamptz      NOT NULL,
            PRIMARY KEY (device_id, metric)) WITH (fillfactor = 70)""",
    """CREATE TABLE device_state (
            device_id  text PRIMARY KEY,
            last_seen  timestamptz NOT NULL,
            last_time  timestamptz) WITH (fillfactor = 70)""",
    """CREATE TABLE charger_connectors (
            device_id   text        NOT NULL,
            connector   integer     NOT NULL,
            time        timestamptz NOT NULL,
            state       text        NOT NULL,
            error_code  text        NOT NULL,
            session_id  text        NOT NULL,
            PRIMARY KEY (device_id, connector)) WITH (fillfactor = 70)""",
    """CREATE TABLE charger_sessions (
            device_id   text        NOT NULL,
            session_id  text        NOT NULL,
            connector   integer     NOT NULL,
            started_at  timestamptz NOT NULL,
            last_at     timestamptz NOT NULL,
            last_state  text        NOT NULL,
            start_reason text       NOT NULL DEFAULT '',
            stop_reason text        NOT NULL DEFAULT '',
            PRIMARY KEY (device_id, session_id))""",
    """CREATE TABLE time_partitions (
            parent      text        NOT NULL,
            name        text        NOT NULL UNIQUE,
            range_start timestamptz NOT NULL,
            range_end   timestamptz NOT NULL,
            PRIMARY KEY (parent, range_start))""",
)


def time_series(backend: Backend, chunk_interval: timedelta) -> list[Query]:
    """The raw time-series tables: partitioned (PostgreSQL) or hypertables (TimescaleDB)."""
    out: list[Query] = []
    for table, ddl in _TIME_SERIES_DDL.items():
        if backend == POSTGRES:
            out.append(sql.SQL(ddl + " PARTITION BY RANGE (time)"))
            continue
        segment, order = _SEGMENT_ORDER[table]
        out += [
            sql.SQL(ddl),
            sql.SQL("SELECT create_hypertable({t}, 'time', chunk_time_interval => {i})").format(
                t=sql.Literal(table), i=sql.Literal(chunk_interval)),
            sql.SQL("ALTER TABLE {t} SET (timescaledb.compress, timescaledb.compress_segmentby = {s},"
                    " timescaledb.compress_orderby = {o})").format(
                t=sql.Identifier(table), s=sql.Literal(segment), o=sql.Literal(order)),
        ]
    return out


# Migration 3: latest values move into one row per device. The writer then touches one
# row per device per transaction instead of one per (device, metric): six to eight times
# fewer row versions, which is what lets it keep pace with a bare COPY (storage/README.md).
# The latest value of each metric sits at the same index of four arrays sorted by metric;
# times are integer microseconds since the Unix epoch (binary COPY sends them as they are).
# ``latest_time`` is the newest of ``latest_times``: a batch entirely newer than it, with
# the same metrics, replaces the arrays outright, which is the common case by far.
DEVICE_LATEST: tuple[LiteralString, ...] = (
    """ALTER TABLE device_state
           ADD COLUMN latest_metrics  text[]             NOT NULL DEFAULT '{}',
           ADD COLUMN latest_times    bigint[]           NOT NULL DEFAULT '{}',
           ADD COLUMN latest_values   double precision[] NOT NULL DEFAULT '{}',
           ADD COLUMN latest_received bigint[]           NOT NULL DEFAULT '{}',
           ADD COLUMN latest_time     timestamptz""",
    """INSERT INTO device_state AS d (device_id, last_seen, latest_metrics, latest_times,
                                      latest_values, latest_received, latest_time)
       SELECT device_id, max(received_at), array_agg(metric ORDER BY metric),
              array_agg((extract(epoch FROM time) * 1000000)::bigint ORDER BY metric),
              array_agg(value ORDER BY metric),
              array_agg((extract(epoch FROM received_at) * 1000000)::bigint ORDER BY metric), max(time)
       FROM latest_readings GROUP BY device_id
       ON CONFLICT (device_id) DO UPDATE SET
           latest_metrics = excluded.latest_metrics, latest_times = excluded.latest_times,
           latest_values = excluded.latest_values, latest_received = excluded.latest_received,
           latest_time = excluded.latest_time""",
    "DROP TABLE latest_readings",
    # The merge of stored and new latest values, for the writer's rare case (late data, or
    # another set of metrics): per metric the newer time wins, the stored value on a tie.
    """CREATE TYPE latest_values AS (
           metrics text[], times bigint[], vals double precision[], received bigint[])""",
    """CREATE FUNCTION latest_merge(om text[], ot bigint[], ov double precision[], orc bigint[],
                                   nm text[], nt bigint[], nv double precision[], nr bigint[])
       RETURNS latest_values LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
         SELECT array_agg(metric ORDER BY metric), array_agg(time ORDER BY metric),
                array_agg(value ORDER BY metric), array_agg(received ORDER BY metric)
         FROM (SELECT DISTINCT ON (metric) metric, time, value, received
               FROM (SELECT o.*, 0 AS src FROM unnest(om, ot, ov, orc) AS o (metric, time, value, received)
                     UNION ALL
                     SELECT n.*, 1 FROM unnest(nm, nt, nv, nr) AS n (metric, time, value, received)) both_
               ORDER BY metric, time DESC, src) newest
       $$""",
    # Does the merge change anything: a metric not stored yet, or one newer than stored.
    """CREATE FUNCTION latest_has_newer(om text[], ot bigint[], nm text[], nt bigint[])
       RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
         SELECT EXISTS (SELECT FROM unnest(nm, nt) AS n (metric, time)
                        LEFT JOIN unnest(om, ot) AS o (metric, time) USING (metric)
                        WHERE o.time IS NULL OR n.time > o.time)
       $$""",
    """CREATE VIEW latest_readings AS
       SELECT s.device_id, u.metric, timestamptz 'epoch' + u.time * interval '1 microsecond' AS time,
              u.value, timestamptz 'epoch' + u.received * interval '1 microsecond' AS received_at
       FROM device_state s CROSS JOIN LATERAL
            unnest(s.latest_metrics, s.latest_times, s.latest_values, s.latest_received)
            AS u (metric, time, value, received)""",
)


# Migration 4: the type of the writer's per-device input. The writer sends one array of
# these as a single binary parameter and updates ``device_state`` from ``unnest`` of it,
# instead of COPYing into a temporary stage: a transaction that touched a temporary table
# truncates every ON COMMIT DELETE ROWS table of its session when it commits, which cost
# the writer's state transaction about 0.4 ms per table on every write.
DEVICE_BATCH_STATE: tuple[LiteralString, ...] = (
    """CREATE TYPE device_batch_state AS (
           device_id text, last_seen timestamptz, last_time timestamptz,
           metrics text[], times bigint[], vals double precision[], received bigint[],
           first_time timestamptz, latest_time timestamptz)""",
)


# Migration 5: room on every page of device_state for a new version of each row on it.
# The writer updates the state of every device heard from since its last checkpoint in one
# transaction, so all the rows of a page are rewritten at once, and a row can only be
# updated in place (HOT: no new index entry) while its page has room for the new version.
# With pages full (fillfactor 100), 232 of 462,400 updates were HOT and a checkpoint took
# 16-17 us per device; at 50, all were HOT and it took 11-13 us (ad hoc script, not kept:
# 100,000 devices, two uplinks each per day, 3 days, a flush every second). Existing pages
# keep what they hold; rows moved off them by updates land on pages filled to 50 %.
DEVICE_STATE_FILLFACTOR: tuple[LiteralString, ...] = (
    "ALTER TABLE device_state SET (fillfactor = 50)",
)

