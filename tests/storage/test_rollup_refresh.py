"""PostgreSQL-path rollup: open hours recomputed from raw rows by the refresh (exact before it
runs), late readings merged by the writer at once.

The writer's clock decides: hours still open are noted in ``rollup_dirty``; readings of closed
hours are merged in the write's transaction (``storage.rollup_delta``). The factories' T0 is in
2030, so a sink on the real clock sees every hour open; ``_late_sink`` is one whose clock is a
day past T0, for which every hour is closed. The oracle for merges: the rollup table equals a
GROUP BY over the raw rows.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

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


async def test_late_rows_of_a_closed_hour_are_merged_at_once(three_hours: Store) -> None:
    """A writer whose clock says the hour has closed merges its late rows into that hour's
    rollup rows of their devices in its own transaction; the open hour is noted whole."""
    at = START + 10 * MIN + timedelta(seconds=5)
    await three_hours.sink.write([uplink("air-2", at, {"pm25": 7.0})])  # sink clock < T0: open
    async with three_hours.pool.connection() as conn:
        await rollups.refresh(conn, now=T0)
        # A marker on air-2's row of that hour: merging air-1's late rows must leave it.
        await conn.execute("UPDATE readings_1h SET value_max = -1 WHERE device_id = 'air-2'")
        await conn.commit()
    late_sink = ReadingsSink(three_hours.pool, three_hours.settings, clock=lambda: T0)
    late = [backlog("air-1", at, STEP, "pm25", [1000.0, 2000.0], received=T0),  # two rows, one hour
            uplink("air-1", T0 + timedelta(seconds=5), {"pm25": 3.0})]  # the open hour: noted
    assert (await late_sink.write(late)).readings_inserted == 3
    async with three_hours.pool.connection() as conn:
        cur = await conn.execute("SELECT bucket, device_id FROM rollup_dirty ORDER BY 1, 2")
        assert await cur.fetchall() == [(T0, None)]
        await conn.commit()
        assert await _table_row(conn, "readings_1h", START) == (182, 2000.0, 3.0)  # merged
        await _assert_rollups_answer_like_raw(conn)
        cur = await conn.execute("SELECT value_count, value_max FROM readings_1h WHERE device_id = 'air-2'")
        assert await cur.fetchall() == [(1, -1.0)]  # not touched
        await conn.commit()


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


_RAW_GROUPED = sql.SQL(
    """SELECT device_id, metric, date_bin('1 hour', time, '2000-01-03 00:00:00+00') AS bucket,
              sum(value), count(*), min(value), max(value), max(time),
              (array_agg(value ORDER BY time DESC))[1]
       FROM readings GROUP BY 1, 2, 3 ORDER BY 1, 2, 3""")
_ROLLUP_ROWS = sql.SQL(
    """SELECT device_id, metric, bucket, value_sum, value_count, value_min, value_max, last_time,
              last_value FROM readings_1h ORDER BY 1, 2, 3""")


async def _assert_rollup_is_raw_grouped(conn: Conn) -> None:
    raw = await (await conn.execute(_RAW_GROUPED)).fetchall()
    rolled = await (await conn.execute(_ROLLUP_ROWS)).fetchall()
    await conn.commit()
    assert [r[:3] for r in rolled] == [r[:3] for r in raw]
    for got, want in zip(rolled, raw, strict=True):
        assert got[3] == pytest.approx(want[3]) and got[4:] == want[4:], got[:3]


def _late_sink(store: Store) -> ReadingsSink:
    """A sink whose clock is a day past T0: every hour of the factories' data is closed."""
    return ReadingsSink(store.pool, store.settings, clock=lambda: T0 + timedelta(days=1))


# Before the server's clock (the slow path's), so the slow path merges these too.
PAST = datetime(2026, 1, 5, 10, tzinfo=UTC)


async def test_late_writes_keep_the_rollup_exact_at_every_commit_and_redeliveries_add_nothing(
        three_hours: Store) -> None:
    async with three_hours.pool.connection() as conn:
        await rollups.refresh(conn, now=T0)
        await _assert_rollup_is_raw_grouped(conn)
    sink = _late_sink(three_hours)
    late = backlog("air-1", START + 30 * MIN + timedelta(seconds=50), STEP, "pm25", [1000.0], received=T0)
    other = uplink("air-2", START + 90 * MIN, {"pm25": 4.0, "no2": 2.0})
    assert (await sink.write([late, other])).readings_inserted == 3
    async with three_hours.pool.connection() as conn:
        assert await _dirty(conn) == 0  # nothing noted: merged
        assert await _table_row(conn, "readings_1h", START) == (181, 1000.0, 3.0)
        await _assert_rollup_is_raw_grouped(conn)
        await _assert_rollups_answer_like_raw(conn)
        before = await snapshot(conn)
        await conn.commit()
    # A re-delivery (the slow path: the COPY meets the primary key) adds nothing.
    assert (await sink.write([late, other])).readings_inserted == 0
    async with three_hours.pool.connection() as conn:
        assert await snapshot(conn) == before


async def test_the_slow_path_merges_only_the_rows_it_inserted(pg_store: Store) -> None:
    """A batch mixing re-delivered rows, a duplicate inside itself and new rows in two hours,
    one of them earlier than the hour's newest value: the rollup gets the new rows once."""
    first = [uplink("air-1", PAST + i * STEP, {"pm25": float(i)}) for i in range(10)]
    assert (await pg_store.sink.write(first)).readings_inserted == 10  # fast path, merged
    new_early = backlog("air-1", PAST + timedelta(seconds=5), STEP, "pm25", [-3.0, 500.0], received=PAST)
    new_other = uplink("air-2", PAST + HOUR + MIN, {"pm25": 4.0, "no2": 2.0})
    result = await pg_store.sink.write([first[3], new_early, new_other, new_other])
    assert (result.readings_offered, result.readings_inserted) == (7, 4)
    async with pg_store.pool.connection() as conn:
        assert await _dirty(conn) == 0
        await _assert_rollup_is_raw_grouped(conn)
        cur = await conn.execute(
            "SELECT value_count, value_min, value_max, last_value FROM readings_1h WHERE device_id = 'air-1'")
        assert await cur.fetchall() == [(12, -3.0, 500.0, 9.0)]  # the newest by time stays newest
        await conn.commit()


async def test_out_of_order_writes_keep_the_newest_value_by_device_time(pg_store: Store) -> None:
    at = T0 + 10 * MIN
    sink = _late_sink(pg_store)
    for offset, value in ((30, 3.0), (50, 5.0), (10, 1.0), (40, 4.0)):  # arrival order
        await sink.write([uplink("air-1", at + timedelta(seconds=offset), {"pm25": value})])
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT value_sum, value_count, value_min, value_max, last_time, last_value"
                                 " FROM readings_1h")
        assert await cur.fetchall() == [(13.0, 4, 1.0, 5.0, at + timedelta(seconds=50), 5.0)]
        await conn.commit()
        await _assert_rollup_is_raw_grouped(conn)


async def test_concurrent_writers_on_one_rollup_row_lose_no_update(pg_store: Store) -> None:
    """Kafka's keying keeps writers off each other's devices, but across a rebalance two may
    merge into the same (device, metric, hour): the row lock serialises them."""
    sinks = [_late_sink(pg_store) for _ in range(2)]
    writes = [sinks[i % 2].write([uplink("air-1", T0 + i * timedelta(seconds=7), {"pm25": float(i)})])
              for i in range(40)]
    await asyncio.gather(*writes)
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT value_count, value_sum FROM readings_1h")
        assert await cur.fetchall() == [(40, float(sum(range(40))))]
        await conn.commit()
        await _assert_rollup_is_raw_grouped(conn)


async def test_a_write_across_the_open_hour_notes_it_and_merges_the_rest(pg_store: Store) -> None:
    sink = ReadingsSink(pg_store.pool, pg_store.settings, clock=lambda: T0 + 5 * MIN)
    backfill = backlog("nb-1", T0 - 2 * HOUR, 20 * MIN, "level", [float(i) for i in range(9)],
                       received=T0 + 5 * MIN)  # 2 closed hours, then the open one
    assert (await sink.write([backfill])).readings_inserted == 9
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT bucket, device_id FROM rollup_dirty")
        assert await cur.fetchall() == [(T0, None)]
        cur = await conn.execute("SELECT bucket, value_count FROM readings_1h ORDER BY 1")
        assert await cur.fetchall() == [(T0 - 2 * HOUR, 3), (T0 - HOUR, 3)]
        await conn.commit()
        await rollups.refresh(conn, now=T0 + HOUR)
        await _assert_rollup_is_raw_grouped(conn)
