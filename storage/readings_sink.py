"""The idempotent sink: binary COPY straight into ``readings``, with a staged fallback.

Each write is one transaction. Readings are first COPYed directly into
``readings`` inside a savepoint, which is as fast as a bare COPY; if that
meets the primary key (a re-delivery, or a duplicate inside the batch), the
savepoint is rolled back and the rows go through a per-connection
temporary stage and ``INSERT .. ON CONFLICT DO NOTHING``, so re-delivered
rows vanish. Latest state is upserted from one row per (device, metric),
reduced in Python; on plain PostgreSQL the touched rollup buckets are noted
for ``storage.rollups`` (see ``storage.write_sql``). Times travel as integer
microseconds, which avoids building a Python datetime per row.

On plain PostgreSQL the partitions a batch needs are created first, in
their own short transaction, from a per-sink cache of covered buckets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from citysense.records import RecordBatch
from storage import migrations, partitions
from storage import write_sql as w
from storage.base import WriteResult
from storage.db import TRANSIENT, Conn, Query
from storage.exceptions import StorageRejectedError, StorageUnavailableError
from storage.schema import POSTGRES, ROLLUPS, Backend
from storage.settings import StorageSettings

Row = tuple[object, ...]

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MINUTE_US = 60_000_000
_HOUR_US = 3_600_000_000
# Rollup widths must be whole minutes or hours: buckets are computed from the
# PostgreSQL epoch (2000-01-01), which shares minute and hour boundaries with BUCKET_ORIGIN.
assert {w // timedelta(microseconds=1) for w in ROLLUPS.values()} == {_MINUTE_US, _HOUR_US}


@dataclass(slots=True)
class _Rows:
    readings: list[Row] = field(default_factory=list)  # times: microseconds since 2000-01-01
    # (device, metric) -> the newest reading of the batch (time, value, received; PG-epoch us)
    latest: dict[tuple[str, str], tuple[int, float, int]] = field(default_factory=dict)
    minutes: set[int] = field(default_factory=set)  # PG-epoch us of the minute buckets touched
    statuses: list[Row] = field(default_factory=list)
    health: list[Row] = field(default_factory=list)
    # device -> [last received (us), last device time (us) or -1]
    seen: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, batches: Sequence[RecordBatch]) -> _Rows:
        out = cls()
        latest = out.latest
        minutes = out.minutes
        append = out.readings.append
        shift = w.PG_EPOCH_US
        for b in batches:
            last = -1
            for r in b.readings:
                t = r.time_ns // 1000
                pt, pr = t - shift, r.received_ns // 1000 - shift
                append((r.device_id, r.metric, pt, r.value, pr, r.seq, r.quality))
                key = (r.device_id, r.metric)
                have = latest.get(key)
                if have is None or have[0] < pt:
                    latest[key] = (pt, r.value, pr)
                minutes.add(pt - pt % _MINUTE_US)
                last = t if t > last else last
            for s in b.statuses:
                t = s.time_ns // 1000
                out.statuses.append(
                    (s.device_id, s.connector, t, s.state, s.error_code, s.session_id, s.info))
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
    """Writes readings, charger statuses and health; keeps latest state, notes dirty rollup buckets."""

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
                        raise StorageRejectedError(f"write refused: {exc}") from exc
                    self._covered.clear()
        except TRANSIENT as exc:
            raise StorageUnavailableError(f"write failed, will retry: {exc}") from exc
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.DataError,
                OverflowError, ValueError) as exc:
            # A value the database (or psycopg's binary dumper) cannot take: the records' fault.
            raise StorageRejectedError(f"write refused: {type(exc).__name__}: {exc}") from exc
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
                inserted = await self._move_readings(conn, rows)
                statuses = await self._move(
                    conn, rows.statuses, w.COPY_STATUS, w.STATUS_TYPES, w.STATUS_STATEMENT, count_query=True)
                health = await self._move(
                    conn, rows.health, w.COPY_HEALTH, w.HEALTH_TYPES, w.HEALTH_STATEMENT, count_query=False)
                ids = sorted(rows.seen)
                await conn.execute(w.SEEN_STATEMENT, (
                    ids, [rows.seen[d][0] for d in ids],
                    [rows.seen[d][1] if rows.seen[d][1] >= 0 else None for d in ids]))
        return WriteResult(len(rows.readings), inserted, statuses, health)

    async def _move_readings(self, conn: Conn, rows: _Rows) -> int:
        if not rows.readings:
            return 0
        note_dirty = self._backend == POSTGRES
        async with conn.cursor() as cur:
            try:
                async with conn.transaction():  # a savepoint: the fast path may meet a duplicate
                    await _copy(cur, w.COPY_READINGS, w.READINGS_TYPES, rows.readings)
            except psycopg.errors.UniqueViolation:
                # A re-delivery (or a duplicate inside the batch): insert-or-ignore, and feed
                # latest state and dirty buckets only from what is new.
                await _copy(cur, w.COPY_READINGS_STAGE, w.READINGS_TYPES, rows.readings)
                await cur.execute(w.slow_readings_statement(note_dirty=note_dirty))
                got = await cur.fetchone()
                return int(got[0]) if got else 0
            await _copy(cur, w.COPY_LATEST_STAGE, w.LATEST_TYPES,
                        [(d, m, *v) for (d, m), v in rows.latest.items()])
            await cur.execute(w.LATEST_FROM_STAGE)
            if note_dirty:
                names, buckets = _dirty_buckets(rows.minutes)
                await cur.execute(w.NOTE_DIRTY, (names, buckets))
            return len(rows.readings)

    @staticmethod
    async def _move(conn: Conn, rows: list[Row], copy_sql: Query, types: list[str],
                    statement: Query, *, count_query: bool) -> int:
        if not rows:
            return 0
        async with conn.cursor() as cur:
            await _copy(cur, copy_sql, types, rows)
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
            shift = w.PG_EPOCH_US if table == "readings" else 0  # readings carry PG-epoch times
            buckets = {partitions.bucket_index(cast(int, r[time_col]) + shift, width) for r in table_rows}
            covered = self._covered.setdefault(table, set())
            missing = buckets - covered
            if missing:
                starts = [partitions.bucket_start(i, self._settings.chunk_interval) for i in missing]
                await partitions.ensure(conn, table, starts, self._settings.chunk_interval)
                covered |= missing


async def _copy(cur: psycopg.AsyncCursor[object], statement: Query, types: list[str],
                rows: Iterable[Row]) -> None:
    async with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)


def _dirty_buckets(minutes: set[int]) -> tuple[list[str], list[datetime]]:
    """(rollup names, bucket starts) of every rollup bucket holding one of ``minutes``."""
    by_width = {_MINUTE_US: minutes, _HOUR_US: {m - m % _HOUR_US for m in minutes}}
    names: list[str] = []
    buckets: list[datetime] = []
    for name, width in ROLLUPS.items():
        for us in sorted(by_width[width // timedelta(microseconds=1)]):
            names.append(name)
            buckets.append(_PG_EPOCH + timedelta(microseconds=us))
    return names, buckets
