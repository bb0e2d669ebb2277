"""Native range partitions by time (the PostgreSQL path).

Partitions are aligned to ``BUCKET_ORIGIN`` in steps of the configured
width and recorded in ``time_partitions`` (so nothing parses catalog
bounds). If the width changes, new partitions fill only the gaps between
existing ones, so ranges never overlap. Creation and dropping take a
per-table advisory lock: several writers and a maintenance job may race.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from psycopg import sql

from storage import write_sql
from storage.db import Conn

HORIZON_KEY = "readings_dropped_before"  # schema_meta: end of the newest dropped readings partition

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
_ORIGIN_US = int(ORIGIN.timestamp()) * 1_000_000


def width_us(width: timedelta) -> int:
    return width // timedelta(microseconds=1)


def bucket_index(time_us: int, width: int) -> int:
    """Index of the width-``width`` bucket (microseconds) holding ``time_us``."""
    return (time_us - _ORIGIN_US) // width


def bucket_start(index: int, width: timedelta) -> datetime:
    return ORIGIN + index * width


def floor_time(t: datetime, width: timedelta) -> datetime:
    return ORIGIN + ((t - ORIGIN) // width) * width


async def _lock(conn: Conn, table: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"citysense.partitions.{table}",))


Span = tuple[datetime, datetime]


def _gaps(lo: datetime, hi: datetime, taken: list[Span]) -> list[Span]:
    gaps: list[Span] = []
    cursor = lo
    for start, end in sorted(taken):
        if end <= cursor or start >= hi:
            continue
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < hi:
        gaps.append((cursor, hi))
    return gaps


async def ensure(conn: Conn, table: str, starts: Iterable[datetime], width: timedelta) -> list[str]:
    """Make ``table``'s partitions cover ``[start, start + width)`` for every start; returns new names.

    Runs in its own transaction (or savepoint), so the lock is held briefly.
    """
    created: list[str] = []
    async with conn.transaction():
        await _lock(conn, table)
        cur = await conn.execute(
            "SELECT range_start, range_end FROM time_partitions WHERE parent = %s", (table,))
        taken: list[Span] = [(r[0], r[1]) for r in await cur.fetchall()]
        for lo in sorted(set(starts)):
            for glo, ghi in _gaps(lo, lo + width, taken):
                name = f"{table}_p{glo.astimezone(UTC):%Y%m%d_%H%M%S}"
                await conn.execute(
                    sql.SQL("CREATE TABLE {p} PARTITION OF {t} FOR VALUES FROM ({lo}) TO ({hi})").format(
                        p=sql.Identifier(name), t=sql.Identifier(table),
                        lo=sql.Literal(glo), hi=sql.Literal(ghi)))
                await conn.execute(
                    "INSERT INTO time_partitions (parent, name, range_start, range_end) "
                    "VALUES (%s, %s, %s, %s)", (table, name, glo, ghi))
                taken.append((glo, ghi))
                created.append(name)
    return created


async def ensure_ahead(conn: Conn, table: str, now: datetime, width: timedelta, ahead: int) -> list[str]:
    first = floor_time(now, width)
    return await ensure(conn, table, (first + i * width for i in range(ahead + 1)), width)


async def drop_expired(conn: Conn, table: str, before: datetime) -> list[str]:
    """Drop every partition of ``table`` whose range ends at or before ``before``; a readings
    partition's rows of devices without an hourly rollup are first folded into it."""
    async with conn.transaction():
        await _lock(conn, table)
        cur = await conn.execute(
            "SELECT name, range_end FROM time_partitions WHERE parent = %s AND range_end <= %s"
            " ORDER BY range_start", (table, before))
        dropped = await cur.fetchall()
        names = [str(r[0]) for r in dropped]
        for name in names:
            if table == "readings" and await _exists(conn, name):
                # in the drop's transaction: no reader sees both the rows and their fold, or neither
                await conn.execute(write_sql.compact_statement(name))
            await conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        await conn.execute("DELETE FROM time_partitions WHERE parent = %s AND name = ANY(%s)", (table, names))
        if names and table == "readings":
            # Rollup buckets before this have lost their raw rows: never recompute them.
            await conn.execute(
                """INSERT INTO schema_meta (key, value) VALUES (%s, %s::timestamptz::text)
                   ON CONFLICT (key) DO UPDATE SET
                       value = greatest(schema_meta.value::timestamptz, excluded.value::timestamptz)::text""",
                (HORIZON_KEY, max(r[1] for r in dropped)))
    return names


async def _exists(conn: Conn, name: str) -> bool:
    got = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))).fetchone()
    return bool(got and got[0])


async def listing(conn: Conn, table: str) -> list[tuple[str, datetime, datetime]]:
    cur = await conn.execute(
        "SELECT name, range_start, range_end FROM time_partitions WHERE parent = %s ORDER BY range_start",
        (table,))
    return [(str(r[0]), r[1], r[2]) for r in await cur.fetchall()]
