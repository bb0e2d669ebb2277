"""TimescaleDB policies: chunk interval, compression, retention, continuous-aggregate refresh.

Policies are reconciled with the settings by the first migration and by
``citysense db maintain`` (a policy that differs is removed and re-added; one
that matches is left alone, so its running job, schedule and history are
kept), so changing ``CITYSENSE_RETENTION`` and running maintenance is all an
operator does. Maintenance also logs every policy job whose last run failed.
The compression delay exceeds the late-arrival window (checked by the
settings), so a late NB-IoT backlog lands in uncompressed chunks; the
continuous aggregate (``readings_1h``) refreshes over the late-arrival window so late rows
reach it, and real-time aggregation covers the newest buckets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from psycopg import sql

from storage.db import Conn
from storage.schema import ROLLUPS, TIME_SERIES_TABLES
from storage.settings import StorageSettings

log = logging.getLogger(__name__)


async def available(conn: Conn) -> bool:
    cur = await conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')")
    row = await cur.fetchone()
    return bool(row and row[0])


async def installed_version(conn: Conn) -> str | None:
    cur = await conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    row = await cur.fetchone()
    return str(row[0]) if row else None


def _call(function: str, relation: str, **named: object) -> sql.Composed:
    """``SELECT function('relation', name => literal, ...)`` with every part quoted."""
    args = [sql.Literal(relation)] + [
        sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in named.items()
    ]
    return sql.SQL("SELECT {}({})").format(sql.Identifier(function), sql.SQL(", ").join(args))


# The continuous aggregate refreshes every minute: a late row below an aggregate's watermark
# (older than ~1 bucket) is invisible to it until the next refresh, so this bounds that lag.
REFRESH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Policy:
    """A policy job the settings want on ``relation``: its config and schedule, how to (re)make it."""

    relation: str
    proc: str  # timescaledb_information.jobs.proc_name
    config: dict[str, timedelta]  # interval-valued keys of the job's config
    schedule: timedelta | None  # schedule_interval; None: the extension's default
    remove: sql.Composed
    add: sql.Composed

    def matches(self) -> sql.Composed:
        """A query counting the jobs that already are exactly this policy."""
        conds: list[sql.Composable] = [
            sql.SQL("(config->>{k})::interval = {v}").format(k=sql.Literal(k), v=sql.Literal(v))
            for k, v in self.config.items()]
        if self.schedule is not None:
            conds.append(sql.SQL("schedule_interval = {}").format(sql.Literal(self.schedule)))
        return sql.SQL(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE hypertable_schema = current_schema()"
            " AND hypertable_name = {r} AND proc_name = {p} AND {c}"
        ).format(r=sql.Literal(self.relation), p=sql.Literal(self.proc), c=sql.SQL(" AND ").join(conds))


def policies(s: StorageSettings) -> list[Policy]:
    out: list[Policy] = []
    for table in TIME_SERIES_TABLES:
        out += [
            Policy(table, "policy_compression", {"compress_after": s.compression_after}, None,
                   _call("remove_compression_policy", table, if_exists=True),
                   _call("add_compression_policy", table, compress_after=s.compression_after)),
            Policy(table, "policy_retention", {"drop_after": s.retention}, None,
                   _call("remove_retention_policy", table, if_exists=True),
                   _call("add_retention_policy", table, drop_after=s.retention)),
        ]
    keep = {"readings_1h": s.rollup_1h_retention}
    for name, width in ROLLUPS.items():
        offsets = {"start_offset": s.late_arrival_window + 2 * width, "end_offset": width}
        out += [
            Policy(name, "policy_refresh_continuous_aggregate", offsets, REFRESH_EVERY,
                   _call("remove_continuous_aggregate_policy", name, if_exists=True),
                   _call("add_continuous_aggregate_policy", name, **offsets,
                         schedule_interval=REFRESH_EVERY)),
            Policy(name, "policy_retention", {"drop_after": keep[name]}, None,
                   _call("remove_retention_policy", name, if_exists=True),
                   _call("add_retention_policy", name, drop_after=keep[name])),
        ]
    return out


async def configure_policies(conn: Conn, settings: StorageSettings) -> list[str]:
    """Make the chunk interval and policy jobs match the settings; returns what changed.

    A policy already as wanted is left alone: removing and re-adding it would cancel a
    running job (a compression or refresh in progress) and reset its schedule and history
    at every maintenance run. Also logs every policy job whose last run failed.
    """
    changed: list[str] = []
    for table in TIME_SERIES_TABLES:
        cur = await conn.execute(
            "SELECT time_interval FROM timescaledb_information.dimensions"
            " WHERE hypertable_schema = current_schema() AND hypertable_name = %s AND column_name = 'time'",
            (table,))
        row = await cur.fetchone()
        if not row or row[0] != settings.chunk_interval:
            await conn.execute(_call("set_chunk_time_interval", table,
                                     chunk_time_interval=settings.chunk_interval))
            changed.append(f"{table} chunk_time_interval")
    for policy in policies(settings):
        cur = await conn.execute(policy.matches())
        row = await cur.fetchone()
        if row and row[0] == 1:
            continue
        await conn.execute(policy.remove)
        await conn.execute(policy.add)
        changed.append(f"{policy.relation} {policy.proc}")
    for job_id, proc, relation in await failed_jobs(conn):
        log.warning("timescaledb job %s (%s on %s) failed its last run: see "
                    "timescaledb_information.job_history and the server log", job_id, proc, relation)
    return changed


async def failed_jobs(conn: Conn) -> list[tuple[int, str, str]]:
    """Policy jobs of this schema whose last run failed: (job id, proc name, relation)."""
    cur = await conn.execute(
        "SELECT j.job_id, j.proc_name, j.hypertable_name FROM timescaledb_information.jobs j"
        " JOIN timescaledb_information.job_stats s USING (job_id)"
        " WHERE j.hypertable_schema = current_schema() AND s.last_run_status = 'Failed' ORDER BY 1")
    return [(int(r[0]), str(r[1]), str(r[2])) for r in await cur.fetchall()]
