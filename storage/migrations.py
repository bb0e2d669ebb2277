"""Versioned, idempotent schema migrations.

Each migration runs once, inside a transaction, and records its version in
``schema_migrations``. An advisory lock serialises concurrent migrators.
Code declares the schema version it needs (``REQUIRED_VERSION``); the
writer and the API refuse to start against an older schema.

The backend is chosen once, by the first migration: TimescaleDB when the
``timescaledb`` extension is available (and can be created), plain
PostgreSQL otherwise. It is recorded in ``schema_meta`` and never changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql

from storage import alerts_schema, apikeys, audit, rollups_schema, schema, timescale
from storage.db import Conn, Query
from storage.exceptions import SchemaTooOldError
from storage.schema import POSTGRES, TIMESCALE, Backend
from storage.settings import StorageSettings

log = logging.getLogger(__name__)

_LOCK_KEY = 0x63697479  # "city": one advisory-lock key for all migrators


@dataclass(frozen=True, slots=True)
class SchemaContext:
    backend: Backend
    settings: StorageSettings


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    build: Callable[[SchemaContext], Sequence[Query]]


def _v1(ctx: SchemaContext) -> list[Query]:
    return [
        *(sql.SQL(ddl) for ddl in schema.REGISTRY_AND_STATE),
        sql.SQL("INSERT INTO schema_meta (key, value) VALUES ('backend', {})").format(
            sql.Literal(ctx.backend)),
        *schema.time_series(ctx.backend, ctx.settings.chunk_interval),
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "registry, time series, latest state", _v1),
    Migration(2, "rollups 1 minute and 1 hour", lambda ctx: rollups_schema.rollups(ctx.backend)),
    Migration(3, "latest values in one row per device",
              lambda ctx: [sql.SQL(ddl) for ddl in schema.DEVICE_LATEST]),
    Migration(4, "the writer's per-device input type",
              lambda ctx: [sql.SQL(ddl) for ddl in schema.DEVICE_BATCH_STATE]),
    Migration(5, "room on device_state's pages for in-place updates",
              lambda ctx: [sql.SQL(ddl) for ddl in schema.DEVICE_STATE_FILLFACTOR]),
    Migration(6, "alert rules, alerts, transitions, incidents, silences, engine state, outbox",
              lambda ctx: [sql.SQL(ddl) for ddl in alerts_schema.ALERTS_DDL]),
    Migration(7, "API keys", lambda ctx: [sql.SQL(ddl) for ddl in apikeys.APIKEYS_DDL]),
    Migration(8, "audit trail of consumer offsets moved by an operator",
              lambda ctx: [sql.SQL(ddl) for ddl in audit.DDL]),
    Migration(9, "no per-device 1-minute rollup; late rows dirty one device's bucket",
              lambda ctx: rollups_schema.drop_minute_rollup(ctx.backend)),
    Migration(10, "no per-device hourly rollup for devices sampling hourly or less often",
              lambda ctx: rollups_schema.hourly_rollup_class(ctx.backend)),
)

REQUIRED_VERSION = MIGRATIONS[-1].version


def default_settings() -> StorageSettings:
    """The documented defaults, without reading the environment."""
    return StorageSettings.model_construct()


async def current_version(conn: Conn) -> int:
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def backend(conn: Conn) -> Backend:
    """The backend recorded by the first migration (PostgreSQL if none yet)."""
    cur = await conn.execute("SELECT to_regclass('schema_meta') IS NOT NULL")
    row = await cur.fetchone()
    if row and row[0]:
        cur = await conn.execute("SELECT value FROM schema_meta WHERE key = 'backend'")
        row = await cur.fetchone()
        if row and row[0] == TIMESCALE:
            return TIMESCALE
    return POSTGRES


async def _choose_backend(conn: Conn, prefer_timescale: bool) -> Backend:
    if not prefer_timescale or not await timescale.available(conn):
        return POSTGRES
    try:
        async with conn.transaction():  # a savepoint: failure leaves the outer transaction usable
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.warning("timescaledb is available but cannot be created (%s); using plain PostgreSQL", exc)
        return POSTGRES
    return TIMESCALE


async def migrate(
    conn: Conn,
    *,
    target: int | None = None,
    settings: StorageSettings | None = None,
    prefer_timescale: bool = True,
) -> list[int]:
    """Apply pending migrations (up to ``target``); returns the versions applied (empty when up to date)."""
    settings = settings or default_settings()
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version int PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        have = await current_version(conn)
        chosen = await backend(conn) if have else await _choose_backend(conn, prefer_timescale)
        ctx = SchemaContext(chosen, settings)
        for migration in MIGRATIONS:
            if migration.version <= have or (target is not None and migration.version > target):
                continue
            for statement in migration.build(ctx):
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                (migration.version, migration.name),
            )
            applied.append(migration.version)
        if applied and chosen == TIMESCALE and max(applied) == REQUIRED_VERSION:
            await timescale.configure_policies(conn, settings)
    return applied


async def require_current(conn: Conn) -> None:
    have = await current_version(conn)
    if have < REQUIRED_VERSION:
        raise SchemaTooOldError(
            f"database schema is at version {have}, this code needs {REQUIRED_VERSION}: "
            "run `citysense db migrate`"
        )
