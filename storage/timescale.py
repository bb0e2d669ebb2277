"""TimescaleDB policies: chunk interval, compression, retention, continuous-aggregate refresh.

Policies are reconciled with the settings (remove, then add) by the first
migration and by ``citysense db maintain``, so changing
``CITYSENSE_RETENTION`` and running maintenance is all an operator does.
The compression delay exceeds the late-arrival window (checked by the
settings), so a late NB-IoT backlog lands in uncompressed chunks; the
continuous aggregates refresh over the late-arrival window so late rows
reach the rollups, and real-time aggregation covers the newest buckets.
"""

from __future__ import annotations

from datetime import timedelta

from psycopg import sql

from storage.db import Conn
from storage.schema import ROLLUPS, TIME_SERIES_TABLES
from storage.settings import StorageSettings


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


def policy_statements(s: StorageSettings) -> list[sql.Composed]:
    out: list[sql.Composed] = []
    for table in TIME_SERIES_TABLES:
        out += [
            _call("set_chunk_time_interval", table, chunk_time_interval=s.chunk_interval),
            _call("remove_compression_policy", table, if_exists=True),
            _call("add_compression_policy", table, compress_after=s.compression_after),
            _call("remove_retention_policy", table, if_exists=True),
            _call("add_retention_policy", table, drop_after=s.retention),
        ]
    keep = {"readings_1m": s.rollup_1m_retention, "readings_1h": s.rollup_1h_retention}
    for name, width in ROLLUPS.items():
        out += [
            _call("remove_continuous_aggregate_policy", name, if_exists=True),
            _call("add_continuous_aggregate_policy", name,
                  start_offset=s.late_arrival_window + 2 * width, end_offset=width,
                  schedule_interval=max(width, timedelta(minutes=1))),
            _call("remove_retention_policy", name, if_exists=True),
            _call("add_retention_policy", name, drop_after=keep[name]),
        ]
    return out


async def configure_policies(conn: Conn, settings: StorageSettings) -> None:
    for statement in policy_statements(settings):
        await conn.execute(statement)
