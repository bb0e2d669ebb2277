"""One-shot administrative operations behind ``citysense db ...`` and ``citysense devices ...``."""

from __future__ import annotations

import psycopg

from storage import maintenance, migrations, registry
from storage.exceptions import StorageUnavailableError
from storage.settings import StorageSettings


async def _connect(url: str) -> psycopg.AsyncConnection[tuple[object, ...]]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise StorageUnavailableError(f"cannot connect to the database: {exc}") from exc


async def import_devices(url: str, text: str | bytes) -> tuple[int, int]:
    """Validate an exported registry and upsert it; returns (sites, devices)."""
    parsed = registry.parse(text)
    async with await _connect(url) as conn:
        await migrations.require_current(conn)
        return await registry.import_registry(conn, parsed)


async def maintain(url: str, settings: StorageSettings) -> maintenance.MaintenanceReport:
    async with await _connect(url) as conn:
        return await maintenance.maintain(conn, settings)


async def ensure_database(admin_url: str, name: str) -> bool:
    """Create database ``name`` if it is missing (``citysense up``); True when it was created."""
    from psycopg import sql

    async with await _connect(admin_url) as conn:
        cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if await cur.fetchone() is not None:
            return False
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True
