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

# The exception classes that are usually transient, for ``except`` clauses (the alert engine
# uses them). Too wide for records: psycopg files SQLSTATE class 54 (program limit exceeded)
# under OperationalError too; where records meet the database, decide with ``is_transient``.
TRANSIENT = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.AdminShutdown,
)

# SQLSTATE classes that describe the server's or the connection's state, not the statement's
# data: trying the same statement again later may succeed.
_TRANSIENT_CLASSES = frozenset({
    "08",  # connection exception
    "40",  # transaction rollback: serialization failure, deadlock
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "57",  # operator intervention: admin/crash shutdown, cannot connect now, query cancelled
    "58",  # system error: I/O error
})
_TRANSIENT_STATES = frozenset({"55P03", "55006"})  # lock not available, object in use
# Classes where the records themselves are at fault: the same records will never be accepted.
_REFUSED_CLASSES = frozenset({
    "22",  # data exception: bad value, NUL in text, out of range
    "23",  # integrity constraint violation (duplicates are handled before they get here)
    "54",  # program limit exceeded: e.g. a key too large for its btree index (SQLSTATE 54000)
})


def is_transient(exc: BaseException) -> bool:
    """Whether the same operation may succeed if tried again later.

    Decided by SQLSTATE, not by psycopg's exception class: psycopg files class 54
    (program limit exceeded, e.g. an index row too large) under ``OperationalError``
    beside connection failures, and counting it as transient made the writer retry a
    batch holding one over-long device id forever. An ``OperationalError`` without a
    SQLSTATE comes from the client side (the connection broke) and is transient.
    """
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


def is_refused(exc: BaseException) -> bool:
    """Whether the database refused the records for what they contain (never transient)."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    state = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    return state is not None and state[:2] in _REFUSED_CLASSES


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
