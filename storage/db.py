"""Connection pools, built by whoever runs a stage (never at import time)."""

from __future__ import annotations

import time
import weakref
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


class _Checks:
    """The pool's check and reset callbacks (see ``open_pool``)."""

    def __init__(self, check_idle_after_s: float) -> None:
        self._after = check_idle_after_s
        self._returned: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()

    async def check(self, conn: Conn) -> None:
        returned = self._returned.get(conn)
        if returned is not None and time.monotonic() - returned < self._after:
            return  # in use a moment ago: its round trip would cost more than the risk
        await AsyncConnectionPool.check_connection(conn)

    async def reset(self, conn: Conn) -> None:
        """A connection goes back to the pool as it came out: a borrower that switched it to
        autocommit must not hand the next one (the writer) a connection whose every statement
        commits on its own, which would break the writer's all-or-nothing transactions."""
        if conn.autocommit:
            await conn.set_autocommit(False)
        self._returned[conn] = time.monotonic()


async def open_pool(url: str, *, min_size: int = 1, max_size: int = 4,
                    check_idle_after_s: float = 1.0) -> AsyncConnectionPool:
    """A pool that checks a connection idle for ``check_idle_after_s`` as it hands it out
    (one empty round trip), and returns connections out of autocommit.

    Without the check, a connection the server dropped while idle (a restart, a
    terminated backend) fails the next write, and its retry could draw another
    dead one. A connection used within the last second is handed out unchecked:
    the writer takes one per write, many times a second, and the check's round
    trip would cost each write a few tenths of a millisecond. One that died in
    that second fails its write with a retriable error, and the pool discards it
    when it comes back.
    """
    checks = _Checks(check_idle_after_s)
    pool = AsyncConnectionPool(url, min_size=min_size, max_size=max_size, open=False,
                               check=checks.check, reset=checks.reset)
    try:
        await pool.open(wait=True, timeout=30)
    except Exception as exc:  # pool raises PoolTimeout, wrapping the connect error
        await pool.close()
        raise StorageUnavailableError(f"cannot connect to the database: {exc}") from exc
    return pool
