"""The idempotent sink: binary COPY straight into ``readings``, with a staged fallback.

A write is one transaction (``ReadingsSink._write``). The readings are encoded
as binary COPY data in Python (``write_rows``) a slice at a time and sent as
each slice is ready, so the server stores one slice while the next is built.
If that COPY meets the primary key (a re-delivery, or a duplicate inside the
batch), the transaction is rolled back and the rows go through a
per-connection temporary stage and ``INSERT .. ON CONFLICT DO NOTHING``, so
re-delivered rows vanish. On plain PostgreSQL the hours still open that the
readings touch are noted for ``storage.rollups``, and readings of hours already
closed are merged into the hourly rollup in the same transaction
(``storage.rollup_delta``). Times travel as
integer microseconds, which avoids building a Python datetime per row.

``device_state`` (last seen, and the latest value per metric) is kept at
checkpoints: each committed write folds its records into one pending state per
device (``latest_state``), and ``flush()`` merges them into the table in one
statement. The writer stage flushes before it commits Kafka offsets, so a
crash between two flushes re-delivers the batches since the last one, and
their state is derived again.

On plain PostgreSQL, maintenance creates partitions ahead; a write that meets
a time no partition covers creates the partitions it needs and runs again.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import cast

import psycopg
from psycopg_pool import AsyncConnectionPool

from citysense.records import RecordBatch
from storage import copy_binary as cb
from storage import migrations, partitions, rollup_delta
from storage import write_sql as w
from storage.base import WriteResult
from storage.db import Conn, Query, is_refused, is_transient
from storage.exceptions import StorageError, StorageRejectedError, StorageUnavailableError
from storage.latest_state import PG_EPOCH_US, PendingStates
from storage.schema import POSTGRES, Backend
from storage.settings import StorageSettings
from storage.write_rows import Row, WriteRows

_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_ENCODE_STEP = 100  # batches (uplinks) encoded per slice sent while the next is built
_MAX_KNOWN = 2_000_000  # device ids remembered as having a device_state row (about 200 MB at most)


class ReadingsSink:
    """Writes readings, charger statuses and health, feeds the hourly rollup; keeps device
    state pending until ``flush()`` (see the module docstring)."""

    def __init__(
        self, pool: AsyncConnectionPool, settings: StorageSettings | None = None,
        *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._clock = clock  # which rollup hours are still open (see _rollup_statements)
        self._settings = settings or migrations.default_settings()
        self._width = partitions.width_us(self._settings.chunk_interval)
        self._backend: Backend | None = None
        self._adapted: weakref.WeakSet[Conn] = weakref.WeakSet()  # connections that dump cb.Raw
        self._staged: weakref.WeakSet[Conn] = weakref.WeakSet()  # ones with the readings stage
        self._input_oid = 0  # of device_batch_state, looked up with the backend
        self._pending = PendingStates()  # device states of the writes since the last flush
        # devices whose device_state row this sink has seen committed: rows are never deleted,
        # so flushes made only of known devices skip the insert of new ones
        self._known: set[str] = set()
        # device -> whether it keeps a per-device hourly rollup: fixed when it was registered
        # (rollups_schema.hourly_rollup_class), so remembering it is never wrong
        self._has_rollup: dict[str, bool] = {}

    @property
    def pending_devices(self) -> int:
        """Devices whose state waits for the next ``flush()``."""
        return len(self._pending)

    async def write(self, batches: Sequence[RecordBatch]) -> WriteResult:
        rows = WriteRows.plan(batches)  # encoded as it is sent (_move_readings)
        if not rows.devices:
            return WriteResult(0, 0)
        try:
            for attempt in (1, 2):
                try:
                    result = await self._write(rows, make_partitions=attempt == 2)
                    self._pending.absorb(rows.devices)  # committed: its state may be kept now
                    return result
                except psycopg.errors.CheckViolation as exc:
                    # "no partition of relation .. found for row": a time no partition covers
                    # yet (maintenance creates them ahead), or one dropped under us. Make the
                    # batch's partitions and write it again.
                    if attempt == 2 or "partition" not in str(exc) or self._backend != POSTGRES:
                        raise StorageRejectedError(f"write refused: {exc}") from exc
        except psycopg.Error as exc:
            if is_transient(exc):
                raise StorageUnavailableError(f"write failed, will retry: {exc}") from exc
            if is_refused(exc):  # e.g. SQLSTATE 54000, a device id too long for the index
                raise StorageRejectedError(
                    f"write refused (SQLSTATE {exc.sqlstate}): {type(exc).__name__}: {exc}") from exc
            raise StorageError(f"write failed (SQLSTATE {exc.sqlstate}): {exc}") from exc
        except (OverflowError, ValueError) as exc:
            # A value psycopg's binary dumper cannot take: the records' fault.
            raise StorageRejectedError(f"write refused: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")

    async def flush(self) -> None:
        """Merge the device state of every write committed so far into ``device_state``.

        One transaction, one round trip: a record per device (``latest_state``)
        as one array parameter, inserted first for devices new to this sink,
        then merged (``write_sql.DEVICE_UPDATE``). What it could not write stays
        pending for the next flush; the merge is newer-wins, so a state flushed
        twice, or derived again from re-delivered batches, changes nothing."""
        if not self._pending:
            return
        taken = self._pending.take()
        try:
            async with self._pool.connection() as conn:
                await self._prepare(conn)
                new = not self._known.issuperset(taken.devices)  # some device may have no row yet
                params = {"states": cb.Raw(taken.input(self._input_oid))}
                async with conn.pipeline(), conn.cursor() as cur:
                    await cur.execute(w.DEVICE_SETTINGS)
                    if new:
                        await cur.execute(w.DEVICE_NEW, params)
                    await cur.execute(w.DEVICE_UPDATE, params)
                await conn.commit()
        except BaseException as exc:
            self._pending.restore(taken)
            if is_transient(exc):
                raise StorageUnavailableError(f"device state flush failed, will retry: {exc}") from exc
            if isinstance(exc, psycopg.Error):  # not the records' fault: they were stored already
                raise StorageError(f"device state flush failed: {type(exc).__name__}: {exc}") from exc
            raise
        if len(self._known) > _MAX_KNOWN:
            self._known.clear()
        self._known.update(taken.devices)

    async def _prepare(self, conn: Conn) -> None:
        if self._backend is None:
            self._backend = await migrations.backend(conn)
            cur = await conn.execute("SELECT 'device_batch_state'::regtype::oid")
            self._input_oid = int((await cur.fetchone() or [0])[0])
            await conn.commit()
        if conn not in self._adapted:
            conn.adapters.register_dumper(cb.Raw, cb.RawDumper)
            self._adapted.add(conn)

    async def _write(self, rows: WriteRows, *, make_partitions: bool) -> WriteResult:
        """The time series in one transaction; its dirty buckets go with the ``COMMIT``."""
        async with self._pool.connection() as conn:
            await self._prepare(conn)
            if make_partitions:
                await self._ensure_partitions(conn, rows)
            try:
                inserted, all_new, conflicting = await self._move_readings(conn, rows)
                statuses = await self._move(conn, rows.statuses, w.STATUS_STATEMENT, count_query=True)
                health = await self._move(conn, rows.health, w.HEALTH_STATEMENT, count_query=False)
                if all_new and self._backend == POSTGRES:
                    # The fast path stored every reading: the open hours they touch are noted,
                    # the late ones merged, in the round trip of the commit.
                    statements = await self._rollup_statements(conn, rows)
                    async with conn.pipeline():
                        for statement, params in statements:
                            await conn.execute(statement, params)
                        await conn.commit()
                else:
                    await conn.commit()
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()
                raise
        return WriteResult(rows.reading_count, inserted, statuses, health, conflicting)

    async def _rollup_statements(self, conn: Conn, rows: WriteRows) -> list[tuple[Query, Sequence[object]]]:
        """What the fast path sends for the hourly rollup (``storage.rollup_delta``): the hours
        still open by the sink's clock noted whole in ``rollup_dirty``, and the readings of
        earlier hours merged, but those of devices without an hourly rollup. Which side of
        the clock an hour falls only chooses how its readings reach the rollup (a recompute
        from raw rows replaces what a merge added), so this clock need not agree with the
        refresh's or another writer's."""
        open_from = (self._clock() - _PG_EPOCH) // timedelta(microseconds=1)
        open_from -= open_from % rollup_delta.HOUR_US
        hours = {m - m % rollup_delta.HOUR_US for m in rows.minutes}
        opened = sorted(h for h in hours if h >= open_from)
        out: list[tuple[Query, Sequence[object]]] = []
        if opened:
            out.append((w.NOTE_OPEN, [[_PG_EPOCH + timedelta(microseconds=h) for h in opened]]))
        if len(opened) < len(hours):
            late = rollup_delta.late(rows.batches, open_from)
            skip = await self._without_rollup(conn, {r.device_id for r in late})
            if skip:
                late = [r for r in late if r.device_id not in skip]
            if late:
                out.append((w.ROLLUP_MERGE, rollup_delta.params(late)))
        return out

    async def _without_rollup(self, conn: Conn, devices: set[str]) -> set[str]:
        """Those of ``devices`` registered without an hourly rollup; a device not registered
        keeps one (and is asked again next time)."""
        unknown = [d for d in devices if d not in self._has_rollup]
        if unknown:
            if len(self._has_rollup) > _MAX_KNOWN:
                self._has_rollup.clear()
            cur = await conn.execute(w.ROLLUP_CLASS, [unknown])
            self._has_rollup.update((str(r[0]), bool(r[1])) for r in await cur.fetchall())
        return {d for d in devices if self._has_rollup.get(d) is False}

    async def _move_readings(self, conn: Conn, rows: WriteRows) -> tuple[int, bool, int]:
        """The first statement of ``conn``'s transaction: the fast COPY, or on a duplicate key
        a fresh transaction that inserts through the stage and notes the dirty buckets of
        what it inserted. Returns (readings inserted, whether the fast path stored them all,
        conflicting duplicates met)."""
        if not rows.reading_count:
            rows.encode_rest()  # device state is complete once all is encoded
            return 0, False, 0
        async with conn.cursor() as cur:
            try:
                async with cur.copy(w.COPY_READINGS) as copy:
                    # The server stores each slice while the next is encoded.
                    await copy.write(cb.HEADER)
                    if rows.readings:  # encoded for an earlier attempt (see write)
                        await copy.write(bytes(rows.readings))
                    for data in rows.encode(_ENCODE_STEP):
                        await copy.write(data)
                    await copy.write(cb.TRAILER)
            except psycopg.errors.UniqueViolation:
                # A re-delivery (or a duplicate inside the batch): insert-or-ignore, and dirty
                # only the buckets of what is new. Nothing else ran in the transaction yet
                # (no savepoint needed, which would cost two round trips per write).
                await conn.rollback()
                rows.encode_rest()  # should the server have stopped early
                if conn not in self._staged:  # temporary: it lives as long as the connection
                    await conn.execute(w.CREATE_READINGS_STAGE)
                    await conn.commit()
                    self._staged.add(conn)
                await _copy_data(cur, w.COPY_READINGS_STAGE, rows.readings)
                await cur.execute(w.slow_readings_statement(rollup=self._backend == POSTGRES))
                got = await cur.fetchone()
                return (int(got[0]), False, int(got[1])) if got else (0, False, 0)
            return rows.reading_count, True, 0

    @staticmethod
    async def _move(conn: Conn, rows: list[Row], statement: Query, *, count_query: bool) -> int:
        """Statuses or health: few per write, sent as one array per column."""
        if not rows:
            return 0
        async with conn.cursor() as cur:
            await cur.execute(statement, [list(column) for column in zip(*rows, strict=True)])
            if count_query:
                got = await cur.fetchone()
                return int(got[0]) if got else 0
            return max(cur.rowcount, 0)

    async def _ensure_partitions(self, conn: Conn, rows: WriteRows) -> None:
        """Create the partitions the batch needs (PostgreSQL path, after a write met a missing one)."""
        rows.encode_rest()  # its minutes are known once all is encoded
        width = self._width
        needed: dict[str, set[int]] = {
            # partitions hold whole minutes (chunk_interval is whole minutes: StorageSettings), and
            # rows.minutes are PG-epoch minute starts, aligned like the partitions' origin
            "readings": {partitions.bucket_index(m + PG_EPOCH_US, width) for m in rows.minutes},
            "charger_status": {partitions.bucket_index(cast(int, r[2]), width) for r in rows.statuses},
            "device_health": {partitions.bucket_index(cast(int, r[1]), width) for r in rows.health},
        }
        for table, buckets in needed.items():
            if buckets:
                starts = [partitions.bucket_start(i, self._settings.chunk_interval) for i in buckets]
                await partitions.ensure(conn, table, starts, self._settings.chunk_interval)


async def _copy_data(cur: psycopg.AsyncCursor[object], statement: Query, rows: bytes | bytearray) -> None:
    """COPY rows already in binary COPY format (``storage.copy_binary``)."""
    async with cur.copy(statement) as copy:
        await copy.write(cb.HEADER)
        await copy.write(rows)
        await copy.write(cb.TRAILER)
