"""Connection pools, built by whoever runs a stage (never at import time)."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from storage.exceptions import StorageUnavailableError

Conn: TypeAlias = psycopg.AsyncConnection[Any]
Query: TypeAlias = sql.SQL | sql.Composed

TRANSIENT = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.AdminShutdown,
)


async def _reset(conn: Conn) -> None:
    """A connection goes back to the pool as it came out: a borrower that switched it to
    autocommit must not hand the next one (the writer) a connection whose every statement
    commits on its own, which would break the writer's all-or-nothing transactions."""
    if conn.autocommit:
        await conn.set_autocommit(False)


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 4) -> AsyncConnectionPool:
    """A pool that checks each connection as it hands it out (one empty round trip).

    Without the check, a connection the server dropped while idle (a restart, a
    terminated backend) fails the next write, and with two connections per write
    (``ReadingsSink``) the retry could draw the other dead one too.
    """
    pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                               check=AsyncConnectionPool.check_connection, reset=_reset)
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:  # pool raises PoolTimeout, wrapping the connect error
        await pool.close()
        raise StorageUnavailableError(f"cannot connect to the database: {exc}") from exc
    return pool
