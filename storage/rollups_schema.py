"""DDL of the rollups: migration 2 (1-minute and 1-hour rollups) and migration 9 (no 1-minute one).

Kept apart from ``storage.schema`` (the other relations) to keep both modules short. Migration 2
is kept as it was, so a fresh database replays the same history before migration 9 changes it.
"""

from __future__ import annotations

from datetime import timedelta

from psycopg import sql

from storage.db import Query
from storage.schema import POSTGRES, Backend

# What migration 2 created (storage.schema.ROLLUPS is what exists now).
_ROLLUPS_V2 = {"readings_1m": timedelta(minutes=1), "readings_1h": timedelta(hours=1)}


def rollups(backend: Backend) -> list[Query]:
    """Migration 2: 1-minute and 1-hour rollups of readings: tables (PostgreSQL) or continuous
    aggregates (migration 9 dropped the 1-minute one).

    ``rollup_dirty`` lists the rollup buckets whose raw rows changed since they were
    last computed (PostgreSQL path; always empty on TimescaleDB). It has no key, so
    concurrent writers never wait on each other; ``storage.rollups`` recomputes and
    deletes entries, and queries read raw rows for the buckets it lists. The BRIN
    index on ``readings (time)`` lets the recompute read a minute or an hour of rows.
    """
    out: list[Query] = [sql.SQL(
        "CREATE TABLE rollup_dirty (rollup text NOT NULL, bucket timestamptz NOT NULL)")]
    if backend == POSTGRES:
        out.append(sql.SQL(
            "CREATE INDEX readings_time_brin ON readings USING brin (time)"
            " WITH (pages_per_range = 16, autosummarize = on)"))
    for name, width in _ROLLUPS_V2.items():
        if backend == POSTGRES:
            out.append(sql.SQL(
                """CREATE TABLE {n} (
                    device_id   text             NOT NULL,
                    metric      text             NOT NULL,
                    bucket      timestamptz      NOT NULL,
                    value_sum   double precision NOT NULL,
                    value_count bigint           NOT NULL,
                    value_min   double precision NOT NULL,
                    value_max   double precision NOT NULL,
                    last_time   timestamptz      NOT NULL,
                    last_value  double precision NOT NULL,
                    PRIMARY KEY (device_id, metric, bucket)) WITH (fillfactor = 70)"""
            ).format(n=sql.Identifier(name)))
            if width >= timedelta(hours=1):  # the 1-minute rollup skips it: one index less per row
                out.append(sql.SQL("CREATE INDEX {i} ON {n} (bucket)").format(
                    i=sql.Identifier(f"{name}_bucket"), n=sql.Identifier(name)))
            continue
        out.append(sql.SQL(
            """CREATE MATERIALIZED VIEW {n}
               WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
               SELECT device_id, metric, time_bucket({w}, time) AS bucket,
                      sum(value) AS value_sum, count(*) AS value_count,
                      min(value) AS value_min, max(value) AS value_max,
                      max(time) AS last_time, last(value, time) AS last_value
               FROM readings GROUP BY device_id, metric, time_bucket({w}, time)
               WITH NO DATA"""
        ).format(n=sql.Identifier(name), w=sql.Literal(width)))
    return out


# Migration 9: no per-device 1-minute rollup. Every device of the city reports at most once a
# minute, so readings_1m held as many rows as readings (1,162,706 for 1,162,734 in the e2e
# benchmark) and its refresh was most of PostgreSQL's CPU in the pipeline; a series with
# minute buckets reads the same number of rows from readings by its primary key.
# rollup_dirty gains ``device_id``: NULL dirties a whole bucket (what the writer notes for the
# current hour, whose rows all still have to be aggregated), a device id only that device's
# rows in it (late rows for an hour already computed), so a late reading costs the refresh a
# few rows of one device instead of the whole hour of every device.
def drop_minute_rollup(backend: Backend) -> list[Query]:
    out: list[Query] = [
        sql.SQL("DELETE FROM rollup_dirty WHERE rollup = 'readings_1m'"),
        sql.SQL("ALTER TABLE rollup_dirty ADD COLUMN device_id text"),
    ]
    if backend == POSTGRES:
        return [*out, sql.SQL("DROP TABLE readings_1m")]
    # Dropping a continuous aggregate drops its jobs too; removing them first says so and
    # keeps this independent of that (both calls tolerate a policy already gone).
    return [*out,
            sql.SQL("SELECT remove_continuous_aggregate_policy('readings_1m', if_exists => true)"),
            sql.SQL("SELECT remove_retention_policy('readings_1m', if_exists => true)"),
            sql.SQL("DROP MATERIALIZED VIEW readings_1m")]


# Migration 10: no per-device hourly rollup for a device that samples hourly or less often
# (a meter's register every hour): each of its rollup rows would hold one reading, and in the
# e2e benchmark's mix such rows were 86 % of readings_1h and of the writer's merge. Its hourly
# series is read from raw rows instead (``storage.queries``), until retention drops them:
# ``partitions.drop_expired`` first folds them into readings_1h, so its long series stay.
# The class is fixed when the device is first registered (a trigger on INSERT; upserts and
# PATCHes never change it): flipping it would leave rollup rows and raw rows both counting
# the same readings. So a device registered after rollup rows of its readings were written
# (unregistered devices are accepted without a directory) keeps its rollup, and devices
# registered before migration 10 keep theirs. Known gap: a write that merges a device's first
# late readings while that device is being registered can commit rollup rows for a device
# registered without a rollup (the trigger cannot see the uncommitted merge). On TimescaleDB
# the continuous aggregate covers every device, so every device keeps ``rollup_1h``.
HOURLY_SAMPLING_S = 3600.0


def hourly_rollup_class(backend: Backend) -> list[Query]:
    out: list[Query] = [sql.SQL("ALTER TABLE devices ADD COLUMN rollup_1h boolean NOT NULL DEFAULT true")]
    if backend != POSTGRES:
        return out
    return [
        *out,
        sql.SQL(
            """CREATE FUNCTION devices_rollup_class() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                   NEW.rollup_1h := coalesce(
                       CASE WHEN jsonb_typeof(NEW.metadata -> 'sample_interval_s') = 'number'
                            THEN nullif((NEW.metadata ->> 'sample_interval_s')::float8, 0) END,
                       NEW.report_interval_s) < {limit}
                       -- readings stored before it was registered were merged: keep them so
                       OR EXISTS (SELECT FROM readings_1h WHERE device_id = NEW.device_id);
                   RETURN NEW;
               END $$"""
        ).format(limit=sql.Literal(HOURLY_SAMPLING_S)),
        sql.SQL("""CREATE TRIGGER devices_rollup_class BEFORE INSERT ON devices
                   FOR EACH ROW EXECUTE FUNCTION devices_rollup_class()"""),
        # what the refresh, the slow path and the compaction exclude, and the queries look up
        sql.SQL("CREATE INDEX devices_without_rollup ON devices (device_id) WHERE NOT rollup_1h"),
    ]
