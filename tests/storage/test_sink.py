"""The sink: idempotence, late rows, latest state, charger sessions, health, transient failures."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from citysense.records import RecordBatch
from storage import partitions, queries, rollups
from storage.db import open_pool
from storage.exceptions import StorageUnavailableError
from storage.readings_sink import ReadingsSink
from tests.storage.conftest import Store, storage_settings
from tests.storage.factories import T0, backlog, charger, health, scalar, snapshot, uplink

pytestmark = pytest.mark.services

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def _mixed_batches() -> list[RecordBatch]:
    return [
        *(uplink("air-1", T0 + i * MIN, {"pm25": 10.0 + i, "no2": 20.0 - i}) for i in range(5)),
        uplink("air-2", T0, {"pm25": 99.0}),
        charger("ev-1", T0, 1, "Preparing", "s1"),
        charger("ev-1", T0 + MIN, 1, "Charging", "s1"),
        health("nb-1", T0, -101.0),
    ]


async def test_redelivered_batch_changes_nothing(store: Store) -> None:
    batches = _mixed_batches()
    first = await store.sink.write(batches)
    assert (first.readings_offered, first.readings_inserted) == (11, 11)
    assert (first.statuses_inserted, first.health_inserted) == (2, 1)
    async with store.pool.connection() as conn:
        await rollups.refresh(conn, now=T0 + DAY)  # PostgreSQL: roll up every (closed) bucket
        before = await snapshot(conn)

    again = await store.sink.write(batches)

    assert (again.readings_inserted, again.statuses_inserted, again.health_inserted) == (0, 0, 0)
    async with store.pool.connection() as conn:
        assert await scalar(conn, sql.SQL("SELECT count(*) FROM rollup_dirty")) == 0  # nothing to redo
        await conn.commit()
        await rollups.refresh(conn, now=T0 + DAY)
        assert await snapshot(conn) == before
    assert len(before["readings"]) == 11
    assert len(before["readings_1h"]) == 3  # one row per device and metric: all in T0's hour


async def test_overlapping_redelivery_adds_only_new_rows_to_rollups(store: Store) -> None:
    older = [uplink("air-1", T0 + i * 10 * timedelta(seconds=1), {"pm25": float(i)}) for i in range(3)]
    newer = [uplink("air-1", T0 + i * 10 * timedelta(seconds=1), {"pm25": float(i)}) for i in range(3, 6)]
    await store.sink.write(older)
    result = await store.sink.write(older + newer)  # a rebalance re-delivers the first half
    assert result.readings_inserted == 3
    async with store.pool.connection() as conn:
        points = await queries.series(conn, "air-1", "pm25", T0, T0 + MIN, HOUR, "count",
                                      source="readings_1h")
        avg = await queries.series(conn, "air-1", "pm25", T0, T0 + MIN, HOUR, "avg", source="readings_1h")
        last = await queries.series(conn, "air-1", "pm25", T0, T0 + MIN, HOUR, "last", source="readings_1h")
    assert [p.value for p in points] == [6.0]
    assert avg[0].value == pytest.approx(2.5)
    assert last[0].value == 5.0


async def test_duplicates_inside_one_batch_count_once(store: Store) -> None:
    one = uplink("air-1", T0, {"pm25": 1.0})
    result = await store.sink.write([one, one, one])
    assert (result.readings_offered, result.readings_inserted) == (3, 1)
    async with store.pool.connection() as conn:
        count = await queries.series(conn, "air-1", "pm25", T0, T0 + timedelta(hours=1),
                                     timedelta(hours=1), "count", source="readings_1h")
    assert [p.value for p in count] == [1.0]


async def test_late_rows_land_at_their_real_time_and_in_rollups(store: Store) -> None:
    await store.sink.write([uplink("nb-1", T0, {"level": 50.0})])
    start = T0 - timedelta(hours=3)
    late = backlog("nb-1", start, timedelta(minutes=15), "level", [1.0, 2.0, 3.0, 4.0],
                   received=T0 + MIN)
    assert (await store.sink.write([late])).readings_inserted == 4
    await store.sink.flush()

    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT time, value, received_at FROM readings WHERE device_id = 'nb-1' ORDER BY time")
        rows = await cur.fetchall()
        assert [r[0] for r in rows] == [start + i * timedelta(minutes=15) for i in range(4)] + [T0]
        assert all(r[2] == T0 + MIN for r in rows[:4])
        # The late rows are older than the latest value: latest state keeps the newest.
        latest = await queries.latest_per_device(conn, device_ids=["nb-1"])
        assert [(v.time, v.value) for v in latest] == [(T0, 50.0)]
        # ... but last-seen moves to when the backlog arrived.
        cur = await conn.execute("SELECT last_seen, last_time FROM device_state WHERE device_id = 'nb-1'")
        assert await cur.fetchone() == (T0 + MIN, T0)
        hour = timedelta(hours=1)
        expected: dict[queries.Aggregate, float] = {
            "count": 4.0, "avg": 2.5, "min": 1.0, "max": 4.0, "last": 4.0}
        sources: tuple[queries.Source, ...] = ("raw", "readings_1h")
        for source in sources:
            for agg, value in expected.items():
                points = await queries.series(conn, "nb-1", "level", start, start + hour, hour, agg,
                                              source=source)
                assert [p.bucket for p in points] == [start], (source, agg)
                assert points[0].value == pytest.approx(value), (source, agg)
        minute = await queries.series(conn, "nb-1", "level", start, start + hour, MIN, "last",
                                      source="raw")
        assert [p.bucket for p in minute] == [start + i * timedelta(minutes=15) for i in range(4)]


async def test_charger_status_keeps_connector_and_session_state(store: Store) -> None:
    # Delivered out of order: the newest status first.
    await store.sink.write([charger("ev-1", T0 + 30 * MIN, 2, "Finishing", "s9", "stop:EVDisconnected")])
    await store.sink.write([
        charger("ev-1", T0, 2, "Preparing", "s9"),
        charger("ev-1", T0 + MIN, 2, "Charging", "s9", "start:Remote"),
    ])
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT connector, time, state, session_id FROM charger_connectors")
        assert await cur.fetchall() == [(2, T0 + 30 * MIN, "Finishing", "s9")]
        cur = await conn.execute(
            "SELECT session_id, connector, started_at, last_at, last_state, start_reason, stop_reason"
            " FROM charger_sessions")
        assert await cur.fetchall() == [
            ("s9", 2, T0, T0 + 30 * MIN, "Finishing", "Remote", "EVDisconnected")]
        cur = await conn.execute("SELECT count(*) FROM charger_status")
        assert await cur.fetchone() == (3,)


async def test_health_rows_are_stored_once(store: Store) -> None:
    batch = [health("nb-1", T0, -110.5, None), health("nb-1", T0 + MIN, -99.0)]
    assert (await store.sink.write(batch)).health_inserted == 2
    assert (await store.sink.write(batch)).health_inserted == 0
    async with store.pool.connection() as conn:
        cur = await conn.execute("SELECT time, rsrp_dbm, battery_v FROM device_health ORDER BY time")
        assert await cur.fetchall() == [(T0, -110.5, None), (T0 + MIN, -99.0, pytest.approx(3.6))]


async def test_partition_dropped_under_the_sink_is_recreated(pg_store: Store) -> None:
    await pg_store.sink.write([uplink("air-1", T0, {"pm25": 1.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        dropped = await partitions.drop_expired(conn, "readings", T0 + timedelta(days=30))
        await conn.set_autocommit(False)
    assert dropped
    result = await pg_store.sink.write([uplink("air-1", T0 + MIN, {"pm25": 2.0})])
    assert result.readings_inserted == 1
    async with pg_store.pool.connection() as conn:  # the retry sent the rows again
        cur = await conn.execute("SELECT value FROM readings")
        assert await cur.fetchall() == [(2.0,)]


async def test_partitions_follow_a_changed_interval_without_overlap(pg_store: Store) -> None:
    await pg_store.sink.write([uplink("air-1", T0, {"pm25": 1.0})])  # one-day partition
    hourly = ReadingsSink(pg_store.pool, storage_settings(chunk_interval=timedelta(hours=1)))
    await hourly.write([uplink("air-1", T0 + timedelta(days=1, hours=2), {"pm25": 2.0}),
                        uplink("air-1", T0 + MIN, {"pm25": 3.0})])
    async with pg_store.pool.connection() as conn:
        spans = [(s, e) for _, s, e in await partitions.listing(conn, "readings")]
    assert spans == sorted(spans)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert spans[-1][1] - spans[-1][0] == timedelta(hours=1)


async def test_lost_connection_is_retriable_and_loses_nothing(pg_store: Store) -> None:
    pool = await open_pool(pg_store.url, min_size=2, max_size=2, check_idle_after_s=0.2)
    try:
        sink = ReadingsSink(pool, pg_store.settings)
        await sink.write([uplink("air-1", T0, {"pm25": 1.0})])
        await _terminate_pool_connections(pool, pg_store.url)
        await asyncio.sleep(0.3)
        # idle connections the server dropped are replaced as the pool hands them out
        assert (await sink.write([uplink("air-1", T0 + MIN, {"pm25": 2.0})])).readings_inserted == 1

        # a connection lost in the middle of a write: retriable, and nothing is half-written
        batch = [uplink("air-1", T0 + 2 * MIN, {"pm25": 3.0})]
        with pytest.raises(StorageUnavailableError) as info:
            await _terminated_while_waiting(pg_store.url, "readings", sink.write(batch))
        assert info.value.retriable
        assert (await sink.write(batch)).readings_inserted == 1  # the stage's retry succeeds
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT value FROM readings ORDER BY time")
            assert [v for v, in await cur.fetchall()] == [1.0, 2.0, 3.0]

        # a connection lost in the middle of a flush: retriable, and the state stays pending
        with pytest.raises(StorageUnavailableError) as info:
            await _terminated_while_waiting(pg_store.url, "device_state", sink.flush())
        assert info.value.retriable and sink.pending_devices == 1
        await sink.flush()
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT metric, value FROM latest_readings")
            assert await cur.fetchall() == [("pm25", 3.0)]
    finally:
        await pool.close()


async def test_a_connection_returns_to_the_pool_out_of_autocommit(pg_store: Store) -> None:
    pool = await open_pool(pg_store.url, min_size=1, max_size=1)
    try:
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
        async with pool.connection() as conn:
            assert not conn.autocommit
    finally:
        await pool.close()


async def test_a_connection_dropped_just_after_use_fails_the_write_retriably(pg_store: Store) -> None:
    """Connections used within the last second are handed out unchecked (open_pool): one the
    server dropped in that second fails a write, retriably, and the pool then replaces it."""
    pool = await open_pool(pg_store.url, min_size=2, max_size=2, check_idle_after_s=60)
    try:
        sink = ReadingsSink(pool, pg_store.settings)
        await sink.write([uplink("air-1", T0, {"pm25": 1.0})])
        await _terminate_pool_connections(pool, pg_store.url)
        failures = 0
        for _attempt in range(4):  # as the writer's stage retries; both connections may be dead
            try:
                await sink.write([uplink("air-1", T0 + MIN, {"pm25": 2.0})])
                break
            except StorageUnavailableError as exc:
                assert exc.retriable
                failures += 1
        else:
            raise AssertionError("the write never succeeded")
        assert 1 <= failures <= 2
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT value FROM readings ORDER BY time")
            assert [v for v, in await cur.fetchall()] == [1.0, 2.0]
    finally:
        await pool.close()


async def _terminated_while_waiting(url: str, table: str, work: Awaitable[object]) -> None:
    """Run ``work`` while ``table`` is locked, and terminate its backend once it waits."""
    async with await psycopg.AsyncConnection.connect(url) as locker, \
            await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await locker.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(table)))
        task = asyncio.ensure_future(work)
        waiting = """FROM pg_stat_activity WHERE datname = current_database()
                     AND wait_event_type = 'Lock' AND pid <> %s"""
        try:
            await _until(admin, "SELECT EXISTS (SELECT " + waiting + ")", locker.info.backend_pid)
            await admin.execute("SELECT pg_terminate_backend(pid) " + waiting, (locker.info.backend_pid,))
        finally:
            await locker.rollback()
        await task


async def _terminate_pool_connections(pool: AsyncConnectionPool, url: str) -> None:
    async with pool.connection() as a, pool.connection() as b:
        pids = [a.info.backend_pid, b.info.backend_pid]
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) p", (pids,))
        await _until(admin, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = ANY(%s)", pids)


async def _until(conn: psycopg.AsyncConnection[tuple[object, ...]], query: str, param: object) -> None:
    for _ in range(200):
        if (await (await conn.execute(query, (param,))).fetchone() or [False])[0]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not true after 10 s: {query}")


async def test_a_flush_the_database_refuses_fails_for_good_and_keeps_the_state(pg_store: Store) -> None:
    """Not retriable (the stage stops with it) and not the records' fault (they are stored)."""
    from storage.exceptions import StorageError, StorageRejectedError

    await pg_store.sink.write([uplink("air-1", T0, {"pm25": 1.0})])
    async with pg_store.pool.connection() as conn:
        await conn.execute("ALTER TABLE device_state ADD CONSTRAINT no_rows CHECK (false) NOT VALID")
        await conn.commit()
    with pytest.raises(StorageError, match="device state flush failed") as info:
        await pg_store.sink.flush()
    assert not info.value.retriable and not isinstance(info.value, StorageRejectedError)
    assert pg_store.sink.pending_devices == 1
    async with pg_store.pool.connection() as conn:
        await conn.execute("ALTER TABLE device_state DROP CONSTRAINT no_rows")
        await conn.commit()
    await pg_store.sink.flush()
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT metric, value FROM latest_readings")
        assert await cur.fetchall() == [("pm25", 1.0)]


async def test_conflicting_duplicates_are_counted_and_the_first_stored_wins(pg_store: Store) -> None:
    """Issue 12, finding 10: same device, metric and time with another value is no longer silent."""
    first = await pg_store.sink.write([uplink("air-1", T0, {"pm25": 1.0, "pm10": 2.0})])
    assert first.readings_conflicting == 0
    # A re-delivery (same values) is no conflict; another value for pm25 is one.
    again = await pg_store.sink.write([uplink("air-1", T0, {"pm25": 1.0, "pm10": 2.0})])
    assert (again.readings_inserted, again.readings_conflicting) == (0, 0)
    other = await pg_store.sink.write([uplink("air-1", T0, {"pm25": 9.0, "pm10": 2.0})])
    assert (other.readings_inserted, other.readings_conflicting) == (0, 1)
    # Two uplinks of one write disagreeing with each other: the first of the batch is stored.
    later = T0 + timedelta(minutes=1)
    both = await pg_store.sink.write(
        [uplink("air-2", later, {"pm25": 3.0}), uplink("air-2", later, {"pm25": 4.0})])
    assert (both.readings_inserted, both.readings_conflicting) == (1, 1)
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT device_id, metric, value FROM readings ORDER BY 1, 2")
        assert await cur.fetchall() == [
            ("air-1", "pm10", 2.0), ("air-1", "pm25", 1.0), ("air-2", "pm25", 3.0)]
