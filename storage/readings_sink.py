"""The idempotent sink: binary COPY straight into ``readings``, with a staged fallback.

Each write is two transactions on two connections, in flight together and
committed together once both have succeeded (``ReadingsSink._write``): the
time series on one, ``device_state`` on the other. Readings are first COPYed directly into
``readings`` inside a savepoint, which is as fast as a bare COPY; if that
meets the primary key (a re-delivery, or a duplicate inside the batch), the
savepoint is rolled back and the rows go through a per-connection
temporary stage and ``INSERT .. ON CONFLICT DO NOTHING``, so re-delivered
rows vanish. ``device_state`` (last seen, and the latest value per metric)
is updated from one row per device, reduced in Python (``write_rows``); on plain PostgreSQL
the touched rollup buckets are noted for ``storage.rollups`` (see
``storage.write_sql``). Times travel as integer microseconds, which avoids
building a Python datetime per row.

On plain PostgreSQL the partitions a batch needs are created first, in
their own short transaction, from a per-sink cache of covered buckets.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterable, Sequence
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
from storage.write_rows import MINUTE_US, PG_EPOCH_US, Row, WriteRows

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_HOUR_US = 3_600_000_000
_MAX_KNOWN = 2_000_000  # device ids remembered as having a device_state row (about 200 MB at most)
# Rollup widths must be whole minutes or hours: buckets are computed from the
# PostgreSQL epoch (2000-01-01), which shares minute and hour boundaries with BUCKET_ORIGIN.
assert {w // timedelta(microseconds=1) for w in ROLLUPS.values()} == {MINUTE_US, _HOUR_US}


class ReadingsSink:
    """Writes readings, charger statuses and health; keeps device state, notes dirty rollup buckets.

    Needs two connections of ``pool`` per write (see ``_write``).
    """

    def __init__(self, pool: AsyncConnectionPool, settings: StorageSettings | None = None) -> None:
        if pool.max_size < 2:
            raise ValueError(f"ReadingsSink needs a pool of at least 2 connections, got {pool.max_size}")
        self._pool = pool
        self._settings = settings or migrations.default_settings()
        self._width = partitions.width_us(self._settings.chunk_interval)
        self._backend: Backend | None = None
        self._covered: dict[str, set[int]] = {}
        self._staged: weakref.WeakSet[Conn] = weakref.WeakSet()
        # devices whose device_state row this sink has seen committed: rows are never deleted,
        # so batches made only of known devices skip the insert of new ones
        self._known: set[str] = set()

    async def write(self, batches: Sequence[RecordBatch]) -> WriteResult:
        try:
            rows = WriteRows.of(batches)
        except ValueError as exc:
            raise StorageRejectedError(f"write refused: {exc}") from exc
        if not rows.devices:
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

    async def _write(self, rows: WriteRows) -> WriteResult:
        """Time series on one connection, device state on a second, both in flight at once.

        The state update runs on the server while the readings are still being
        encoded and COPYed. Neither transaction commits before both have run
        every statement; if either fails by then, both roll back, so records
        the database refuses leave no trace. The two commits then go out
        together. Should only one of them land (a crash, a lost connection),
        the write fails and the batch's offsets stay uncommitted: it comes
        again, whatever was stored is ignored as duplicate (readings) or as
        not newer (state), and the rest is written then.
        """
        async with self._pool.connection() as conn, self._pool.connection() as side:
            if self._backend is None:
                self._backend = await migrations.backend(conn)
                await conn.commit()
            if self._backend == POSTGRES:
                await self._ensure_partitions(conn, rows)
            for c in (conn, side):
                if c not in self._staged:  # temporary stages live as long as the connection
                    await c.execute(w.CREATE_STAGES)
                    await c.commit()
                    self._staged.add(c)
            state = _StateUpdate(side, rows, new=not self._known.issuperset(rows.devices))
            try:
                async with conn.transaction():
                    inserted = await self._move_readings(conn, rows, state)
                    state.start()  # if there were no readings to overlap it with
                    statuses = await self._move(
                        conn, rows.statuses, w.COPY_STATUS, w.STATUS_TYPES, w.STATUS_STATEMENT,
                        count_query=True)
                    health = await self._move(
                        conn, rows.health, w.COPY_HEALTH, w.HEALTH_TYPES, w.HEALTH_STATEMENT,
                        count_query=False)
                    await state.finish()  # its failure rolls this transaction back too
                    state.commit()  # beside this transaction's own commit
            except BaseException:
                await state.abandon()
                raise
            await state.committed()
        if len(self._known) > _MAX_KNOWN:
            self._known.clear()
        self._known.update(rows.devices)
        return WriteResult(len(rows.readings), inserted, statuses, health)

    async def _move_readings(self, conn: Conn, rows: WriteRows, state: _StateUpdate) -> int:
        if not rows.readings:
            return 0
        note_dirty = self._backend == POSTGRES
        async with conn.cursor() as cur:
            try:
                # a savepoint: the fast path may meet a duplicate
                async with conn.transaction(), cur.copy(w.COPY_READINGS) as copy:
                    copy.set_types(w.READINGS_TYPES)
                    for row in rows.readings:
                        await copy.write_row(row)
                    # The server works through the rows now; the state update is built and
                    # sent meanwhile, so the second connection works beside this one.
                    state.start()
                    await asyncio.sleep(0)
            except psycopg.errors.UniqueViolation:
                # A re-delivery (or a duplicate inside the batch): insert-or-ignore, and dirty
                # only the buckets of what is new.
                await _copy(cur, w.COPY_READINGS_STAGE, w.READINGS_TYPES, rows.readings)
                await cur.execute(w.slow_readings_statement(note_dirty=note_dirty))
                got = await cur.fetchone()
                return int(got[0]) if got else 0
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

    async def _ensure_partitions(self, conn: Conn, rows: WriteRows) -> None:
        width = self._width
        needed: dict[str, Iterable[Row]] = {
            "readings": rows.readings, "charger_status": rows.statuses, "device_health": rows.health}
        for table, table_rows in needed.items():
            if table == "readings" and width % MINUTE_US == 0:
                # every reading's minute is in rows.minutes (PG-epoch, minute-aligned like the
                # partition origin): a partition holds whole minutes, so they name the same ones
                buckets = {partitions.bucket_index(m + PG_EPOCH_US, width) for m in rows.minutes}
            else:
                time_col = 1 if table == "device_health" else 2
                shift = PG_EPOCH_US if table == "readings" else 0  # readings carry PG-epoch times
                buckets = {partitions.bucket_index(cast(int, r[time_col]) + shift, width)
                           for r in table_rows}
            covered = self._covered.setdefault(table, set())
            missing = buckets - covered
            if missing:
                starts = [partitions.bucket_start(i, self._settings.chunk_interval) for i in missing]
                await partitions.ensure(conn, table, starts, self._settings.chunk_interval)
                covered |= missing


class _StateUpdate:
    """The device-state half of a write, on its own connection and transaction (see ``_write``)."""

    def __init__(self, conn: Conn, rows: WriteRows, *, new: bool) -> None:
        self._conn = conn
        self._rows = rows
        self._new = new  # some device may have no device_state row yet
        self._task: asyncio.Future[None] | None = None
        self._commit: asyncio.Future[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(self._rows.device_rows()))

    async def _run(self, device_rows: list[Row]) -> None:
        """Stage one row per device and merge it into ``device_state``; leaves the transaction open."""
        async with self._conn.cursor() as cur:
            await _copy(cur, w.COPY_DEVICE_STAGE, w.DEVICE_TYPES, device_rows)
            await cur.execute(w.DEVICE_STATEMENTS_WITH_NEW if self._new else w.DEVICE_STATEMENTS)

    async def finish(self) -> None:
        self.start()
        assert self._task is not None
        await self._task

    def commit(self) -> None:
        self._commit = asyncio.ensure_future(self._conn.commit())

    async def committed(self) -> None:
        assert self._commit is not None
        await self._commit

    async def abandon(self) -> None:
        """After a failure: roll back if not committing yet, else let the commit finish."""
        if self._commit is not None:
            with contextlib.suppress(BaseException):
                await self._commit
            return
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(psycopg.Error):
            await self._conn.rollback()


async def _copy(cur: psycopg.AsyncCursor[object], statement: Query, types: list[str],
                rows: Iterable[Row]) -> None:
    async with cur.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)


def _dirty_buckets(minutes: set[int]) -> tuple[list[str], list[datetime]]:
    """(rollup names, bucket starts) of every rollup bucket holding one of ``minutes``."""
    by_width = {MINUTE_US: minutes, _HOUR_US: {m - m % _HOUR_US for m in minutes}}
    names: list[str] = []
    buckets: list[datetime] = []
    for name, width in ROLLUPS.items():
        for us in sorted(by_width[width // timedelta(microseconds=1)]):
            names.append(name)
            buckets.append(_PG_EPOCH + timedelta(microseconds=us))
    return names, buckets
