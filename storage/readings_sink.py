"""The idempotent sink: binary COPY into staging tables, then insert-or-ignore.

COPY is the fastest way into PostgreSQL, but it cannot skip rows that are
already there. So each write COPYs into per-connection temporary tables
(cleared on commit) and moves the rows with ``INSERT .. SELECT .. ON
CONFLICT DO NOTHING``: re-delivered rows meet the primary key and vanish.
The same statements upsert latest state and, on plain PostgreSQL, the
rollups (``storage.write_sql``). Times travel as integer microseconds and
become timestamptz in SQL, which avoids building a Python datetime per row.

On plain PostgreSQL the partitions a batch needs are created first, in
their own short transaction, from a per-sink cache of covered buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from citysense.records import RecordBatch
from storage import migrations, partitions
from storage import write_sql as w
from storage.base import WriteResult
from storage.db import TRANSIENT, Conn, Query
from storage.exceptions import StorageError, StorageUnavailableError
from storage.schema import POSTGRES, Backend
from storage.settings import StorageSettings

Row = tuple[object, ...]


@dataclass(slots=True)
class _Rows:
    readings: list[Row] = field(default_factory=list)
    statuses: list[Row] = field(default_factory=list)
    health: list[Row] = field(default_factory=list)
    # device -> [last received (us), last device time (us) or -1]
    seen: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, batches: Sequence[RecordBatch]) -> _Rows:
        out = cls()
        for b in batches:
            last = -1
            for r in b.readings:
                t = r.time_ns // 1000
                out.readings.append(
                    (r.device_id, r.metric, t, r.value, r.received_ns // 1000, r.seq, r.quality))
                last = t if t > last else last
            for s in b.statuses:
                t = s.time_ns // 1000
                out.statuses.append((s.device_id, s.connector, t, s.state, s.error_code, s.session_id))
                last = t if t > last else last
            for h in b.health:
                t = h.time_ns // 1000
                out.health.append((h.device_id, t, h.rsrp_dbm, h.sinr_db, h.ce_level, h.battery_v))
                last = t if t > last else last
            mark = out.seen.setdefault(b.device_id, [b.received_ns // 1000, last])
            mark[0] = max(mark[0], b.received_ns // 1000)
            mark[1] = max(mark[1], last)
        return out


class ReadingsSink:
    """Writes readings, charger statuses and health, and keeps latest state and rollups current."""

    def __init__(self, pool: AsyncConnectionPool, settings: StorageSettings | None = None) -> None:
        self._pool = pool
        self._settings = settings or migrations.default_settings()
        self._width = partitions.width_us(self._settings.chunk_interval)
        self._backend: Backend | None = None
        self._covered: dict[str, set[int]] = {}

    async def write(self, batches: Sequence[RecordBatch]) -> WriteResult:
        rows = _Rows.of(batches)
        if not rows.seen:
            return WriteResult(0, 0)
        try:
            for attempt in (1, 2):
                try:
                    return await self._write(rows)
                except psycopg.errors.CheckViolation as exc:
                    # "no partition of relation .. found for row": a partition was dropped under us.
                    if attempt == 2 or "partition" not in str(exc):
                        raise StorageError(f"write refused: {exc}") from exc
                    self._covered.clear()
        except TRANSIENT as exc:
            raise StorageUnavailableError(f"write failed, will retry: {exc}") from exc
        raise AssertionError("unreachable")

    async def _write(self, rows: _Rows) -> WriteResult:
        async with self._pool.connection() as conn:
            if self._backend is None:
                self._backend = await migrations.backend(conn)
                await conn.commit()
            if self._backend == POSTGRES:
                await self._ensure_partitions(conn, rows)
            async with conn.transaction():
                await conn.execute(w.CREATE_STAGES)
                inserted = await self._move_readings(conn, rows.readings)
                statuses = await self._move(
                    conn, rows.statuses, w.COPY_STATUS, w.STATUS_TYPES, w.STATUS_STATEMENT, count_query=True)
                health = await self._move(
                    conn, rows.health, w.COPY_HEALTH, w.HEALTH_TYPES, w.HEALTH_STATEMENT, count_query=False)
                ids = sorted(rows.seen)
                await conn.execute(w.SEEN_STATEMENT, (
                    ids, [rows.seen[d][0] for d in ids],
                    [rows.seen[d][1] if rows.seen[d][1] >= 0 else None for d in ids]))
        return WriteResult(len(rows.readings), inserted, statuses, health)

    async def _move_readings(self, conn: Conn, rows: list[Row]) -> int:
        if not rows:
            return 0
        async with conn.cursor() as cur:
            async with cur.copy(w.COPY_READINGS) as copy:
                copy.set_types(w.READINGS_TYPES)
                for row in rows:
                    await copy.write_row(row)
            try:
                async with conn.transaction():  # a savepoint: the fast path may meet a duplicate
                    await cur.execute(w.READINGS_FAST_INSERT)
                fast = True
            except psycopg.errors.UniqueViolation:
                fast = False  # a re-delivery: insert-or-ignore, and roll up only what is new
            await cur.execute(w.readings_statement(fast=fast, with_rollups=self._backend == POSTGRES))
            got = await cur.fetchone()
            return int(got[0]) if got else 0

    @staticmethod
    async def _move(conn: Conn, rows: list[Row], copy_sql: Query, types: list[str],
                    statement: Query, *, count_query: bool) -> int:
        if not rows:
            return 0
        async with conn.cursor() as cur:
            async with cur.copy(copy_sql) as copy:
                copy.set_types(types)
                for row in rows:
                    await copy.write_row(row)
            await cur.execute(statement)
            if count_query:
                got = await cur.fetchone()
                return int(got[0]) if got else 0
            return max(cur.rowcount, 0)

    async def _ensure_partitions(self, conn: Conn, rows: _Rows) -> None:
        width = self._width
        needed: dict[str, Iterable[Row]] = {
            "readings": rows.readings, "charger_status": rows.statuses, "device_health": rows.health}
        for table, table_rows in needed.items():
            time_col = 1 if table == "device_health" else 2
            buckets = {partitions.bucket_index(cast(int, r[time_col]), width) for r in table_rows}
            covered = self._covered.setdefault(table, set())
            missing = buckets - covered
            if missing:
                starts = [partitions.bucket_start(i, self._settings.chunk_interval) for i in missing]
                await partitions.ensure(conn, table, starts, self._settings.chunk_interval)
                covered |= missing
