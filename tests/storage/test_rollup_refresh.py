"""PostgreSQL-path rollups: recomputed from raw rows by a background refresh, exact before it runs."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from psycopg import sql

from storage import maintenance, queries, registry, rollups
from storage.db import Conn
from storage.readings_sink import ReadingsSink
from tests.storage.conftest import Store, storage_settings
from tests.storage.factories import T0, backlog, scalar, snapshot, uplink
from tests.storage.registry_sample import sample_json

pytestmark = pytest.mark.services

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
STEP = timedelta(seconds=20)
START = T0 - 3 * HOUR
AGGREGATES: tuple[queries.Aggregate, ...] = ("avg", "min", "max", "count", "last")


async def _dirty(conn: Conn) -> int:
    count = await scalar(conn, sql.SQL("SELECT count(*) FROM rollup_dirty"))
    await conn.commit()
    assert isinstance(count, int)
    return count


async def _table_row(conn: Conn, rollup: str, bucket: datetime) -> tuple[object, ...] | None:
    cur = await conn.execute(
        sql.SQL("SELECT value_count, value_max, last_value FROM {} "
                "WHERE device_id = 'air-1' AND metric = 'pm25' AND bucket = %s").format(
            sql.Identifier(rollup)), (bucket,))
    row = await cur.fetchone()
    await conn.commit()
    return row


async def _assert_rollups_answer_like_raw(conn: Conn, device: str = "air-1") -> None:
    for bucket in (HOUR, 3 * HOUR):
        for agg in AGGREGATES:
            fast = await queries.series(conn, device, "pm25", START, T0, bucket, agg, source="readings_1h")
            raw = await queries.series(conn, device, "pm25", START, T0, bucket, agg, source="raw")
            assert [p.bucket for p in fast] == [p.bucket for p in raw], (bucket, agg)
            assert [p.value for p in fast] == pytest.approx([p.value for p in raw]), (bucket, agg)
    await conn.commit()


@pytest.fixture
async def three_hours(pg_store: Store) -> Store:
    async with pg_store.pool.connection() as conn:
        await registry.import_registry(conn, registry.parse(sample_json()))
    rows = [uplink("air-1", START + i * STEP, {"pm25": float((i * 7) % 50)})
            for i in range(int(3 * HOUR / STEP))]
    for chunk in range(0, len(rows), 100):
        await pg_store.sink.write(rows[chunk : chunk + 100])
    return pg_store


async def test_a_late_row_is_exact_before_the_refresh_and_in_the_rollups_after(three_hours: Store) -> None:
    async with three_hours.pool.connection() as conn:
        assert await _dirty(conn) > 0
        await _assert_rollups_answer_like_raw(conn)  # all dirty: served from raw rows
        report = await rollups.refresh(conn, now=T0)
        assert (report.buckets, report.devices) == ({"readings_1h": 3}, {"readings_1h": 0})
        assert await _dirty(conn) == 0
        await _assert_rollups_answer_like_raw(conn)  # all clean: served from the rollup table
        late_minute = START + 30 * MIN
        assert await _table_row(conn, "readings_1h", START) == (180, 49.0, 3.0)

    # The sink's clock is before T0 (the factories' T0 is in 2030): the late row's hour is
    # still open for it, so the whole hour is dirtied.
    late = backlog("air-1", late_minute + timedelta(seconds=50), STEP, "pm25", [1000.0], received=T0)
    assert (await three_hours.sink.write([late])).readings_inserted == 1

    async with three_hours.pool.connection() as conn:
        # Before the refresh: the table is stale, the queries are not.
        assert await _table_row(conn, "readings_1h", START) == (180, 49.0, 3.0)
        assert await _dirty(conn) == 1  # its hour
        await _assert_rollups_answer_like_raw(conn)
        counts = await queries.reading_counts(conn, "district", START, T0)
        assert counts == {"North": 3 * 180 + 1}
        await conn.commit()

        report = await rollups.refresh(conn, now=T0)
        assert (report.buckets, report.devices) == ({"readings_1h": 1}, {"readings_1h": 0})
        assert await _table_row(conn, "readings_1h", START) == (181, 1000.0, 3.0)
        assert await _dirty(conn) == 0
        await _assert_rollups_answer_like_raw(conn)
        assert await queries.reading_counts(conn, "district", START, T0) == counts
        await conn.commit()

        # Idempotent: a second refresh and a re-delivery change nothing.
        before = await snapshot(conn)
        await conn.commit()
        assert (await rollups.refresh(conn, now=T0)).buckets == {"readings_1h": 0}
    assert (await three_hours.sink.write([late])).readings_inserted == 0
    async with three_hours.pool.connection() as conn:
        assert await _dirty(conn) == 0
        assert await snapshot(conn) == before


async def test_late_rows_of_a_closed_hour_dirty_only_their_devices(three_hours: Store) -> None:
    """A writer whose clock says the hour has closed notes (hour, device) for its late rows, and
    the refresh recomputes those devices' rows of that hour only, with the same answers."""
    at = START + 10 * MIN + timedelta(seconds=5)
    await three_hours.sink.write([uplink("air-2", at, {"pm25": 7.0})])  # sink clock < T0: whole hour
    async with three_hours.pool.connection() as conn:
        await rollups.refresh(conn, now=T0)
        # A marker on air-2's row of that hour: recomputing air-1 alone must leave it.
        await conn.execute("UPDATE readings_1h SET value_max = -1 WHERE device_id = 'air-2'")
        await conn.commit()
    late_sink = ReadingsSink(three_hours.pool, three_hours.settings, clock=lambda: T0)
    late = [backlog("air-1", at, STEP, "pm25", [1000.0, 2000.0], received=T0),  # two rows, one hour
            uplink("air-1", T0 + timedelta(seconds=5), {"pm25": 3.0})]  # the open hour: all of it
    assert (await late_sink.write(late)).readings_inserted == 3
    async with three_hours.pool.connection() as conn:
        cur = await conn.execute("SELECT bucket, device_id FROM rollup_dirty ORDER BY 1, 2")
        assert await cur.fetchall() == [(START, "air-1"), (T0, None)]
        await conn.commit()
        await _assert_rollups_answer_like_raw(conn)  # exact before the refresh
        # air-2's row of that hour is not dirty: its series reads the row (with the marker).
        marked = await queries.series(conn, "air-2", "pm25", START, START + HOUR, HOUR, "max",
                                      source="readings_1h")
        assert [p.value for p in marked] == [-1.0]
        await conn.commit()
        report = await rollups.refresh(conn, now=T0)
        assert (report.buckets, report.devices) == ({"readings_1h": 0}, {"readings_1h": 1})
        assert await _table_row(conn, "readings_1h", START) == (182, 2000.0, 3.0)
        cur = await conn.execute("SELECT value_count, value_max FROM readings_1h WHERE device_id = 'air-2'")
        assert await cur.fetchall() == [(1, -1.0)]  # not recomputed
        await conn.commit()
        await _assert_rollups_answer_like_raw(conn)
        assert await _dirty(conn) == 1  # the open hour


async def test_open_buckets_stay_dirty_until_they_close(pg_store: Store) -> None:
    at = T0 + 3 * MIN
    for i in range(3):  # three writes into the same hour
        await pg_store.sink.write([uplink("air-1", at + i * STEP, {"pm25": 5.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        assert await _dirty(conn) == 3
        assert (await rollups.refresh(conn, now=at + MIN)).buckets == {"readings_1h": 0}
        assert await _dirty(conn) == 1  # compacted: one entry per open bucket
        hour = await queries.series(conn, "air-1", "pm25", T0, T0 + HOUR, HOUR, "count", source="readings_1h")
        assert [p.value for p in hour] == [3.0]  # the open hour is served from raw rows
        assert (await rollups.refresh(conn, now=T0 + HOUR)).buckets == {"readings_1h": 1}
        assert await _dirty(conn) == 0


async def test_rows_accepted_after_retention_do_not_replace_rolled_up_buckets(pg_store: Store) -> None:
    old = T0 - timedelta(days=100)
    await pg_store.sink.write([uplink("air-1", old, {"pm25": 1.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        report = await maintenance.maintain(conn, storage_settings(retention=timedelta(days=90)), now=T0)
        assert report.refreshed is not None and report.refreshed.buckets["readings_1h"] == 1
        assert report.dropped
    # The same hour, after its raw rows were dropped: a recompute would keep only this row.
    await pg_store.sink.write([uplink("air-1", old + timedelta(seconds=30), {"pm25": 9.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        report2 = await rollups.refresh(conn, now=T0)
        assert (report2.buckets, report2.skipped) == ({"readings_1h": 0}, 1)
        cur = await conn.execute("SELECT value_count, value_max FROM readings_1h")
        assert await cur.fetchall() == [(1, 1.0)]
