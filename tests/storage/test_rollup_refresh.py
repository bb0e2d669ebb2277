"""PostgreSQL-path rollup: merged by the writer at every commit; the refresh recomputes leftovers.

Since the writer merges what it stores into ``readings_1h`` (``storage.rollup_delta``), nothing
new is noted in ``rollup_dirty``; the refresh still recomputes from raw rows whatever is listed
there (entries left by writers from before that change), and queries still read raw rows for
listed buckets. The oracle throughout: the rollup table equals a GROUP BY over the raw rows.
"""

from __future__ import annotations

import asyncio
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


async def test_the_rollup_is_exact_at_every_commit_late_rows_and_redeliveries_too(three_hours: Store) -> None:
    async with three_hours.pool.connection() as conn:
        assert await _dirty(conn) == 0  # nothing left for a refresh
        await _assert_rollup_is_raw_grouped(conn)
        await _assert_rollups_answer_like_raw(conn)
        assert await _table_row(conn, "readings_1h", START) == (180, 49.0, 3.0)

    late = backlog("air-1", START + 30 * MIN + timedelta(seconds=50), STEP, "pm25", [1000.0], received=T0)
    assert (await three_hours.sink.write([late])).readings_inserted == 1
    async with three_hours.pool.connection() as conn:
        assert await _table_row(conn, "readings_1h", START) == (181, 1000.0, 3.0)  # no refresh
        assert await _dirty(conn) == 0
        await _assert_rollup_is_raw_grouped(conn)
        await _assert_rollups_answer_like_raw(conn)
        assert await queries.reading_counts(conn, "district", START, T0) == {"North": 3 * 180 + 1}
        await conn.commit()
        before = await snapshot(conn)
        await conn.commit()
        assert (await rollups.refresh(conn, now=T0 + HOUR)).buckets == {"readings_1h": 0}

    # A re-delivery (the slow path: the COPY meets the primary key) adds nothing.
    assert (await three_hours.sink.write([late])).readings_inserted == 0
    async with three_hours.pool.connection() as conn:
        assert await snapshot(conn) == before


async def test_the_slow_path_merges_only_the_rows_it_inserted(three_hours: Store) -> None:
    """A batch mixing re-delivered rows, a duplicate inside itself and new rows in two hours,
    one of them earlier than the hour's newest value: the rollup gets the new rows once."""
    old = uplink("air-1", START + 10 * MIN, {"pm25": 7.0 * 10 % 50})  # stored by the fixture
    new_early = backlog("air-1", START + 10 * MIN + timedelta(seconds=5), STEP, "pm25", [-3.0, 500.0],
                        received=T0)
    new_other = uplink("air-2", START + HOUR + MIN, {"pm25": 4.0, "no2": 2.0})
    result = await three_hours.sink.write([old, new_early, new_other, new_other])
    assert (result.readings_offered, result.readings_inserted) == (7, 4)
    async with three_hours.pool.connection() as conn:
        await _assert_rollup_is_raw_grouped(conn)
        assert await _table_row(conn, "readings_1h", START) == (182, 500.0, 3.0)  # newest stays newest
        cur = await conn.execute(
            "SELECT value_min FROM readings_1h WHERE device_id = 'air-1' AND bucket = %s", (START,))
        assert await cur.fetchone() == (-3.0,)
        await conn.commit()


async def test_out_of_order_writes_keep_the_newest_value_by_device_time(pg_store: Store) -> None:
    at = T0 + 10 * MIN
    for offset, value in ((30, 3.0), (50, 5.0), (10, 1.0), (40, 4.0)):  # arrival order
        await pg_store.sink.write([uplink("air-1", at + timedelta(seconds=offset), {"pm25": value})])
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT value_sum, value_count, value_min, value_max, last_time, last_value"
                                 " FROM readings_1h")
        assert await cur.fetchall() == [(13.0, 4, 1.0, 5.0, at + timedelta(seconds=50), 5.0)]
        await conn.commit()
        await _assert_rollup_is_raw_grouped(conn)


async def test_concurrent_writers_on_one_rollup_row_lose_no_update(pg_store: Store) -> None:
    """Kafka's keying keeps writers off each other's devices, but across a rebalance two may
    merge into the same (device, metric, hour): the row lock serialises them."""
    sinks = [ReadingsSink(pg_store.pool, pg_store.settings) for _ in range(2)]
    writes = [sinks[i % 2].write([uplink("air-1", T0 + i * timedelta(seconds=7), {"pm25": float(i)})])
              for i in range(40)]
    await asyncio.gather(*writes)
    async with pg_store.pool.connection() as conn:
        cur = await conn.execute("SELECT value_count, value_sum FROM readings_1h")
        assert await cur.fetchall() == [(40, float(sum(range(40))))]
        await conn.commit()
        await _assert_rollup_is_raw_grouped(conn)


# The refresh, for entries a writer from before the merge left in rollup_dirty.
async def _note(conn: Conn, bucket: datetime, device: str | None = None) -> None:
    await conn.execute("INSERT INTO rollup_dirty (rollup, bucket, device_id) VALUES ('readings_1h', %s, %s)",
                       (bucket, device))
    await conn.commit()


async def test_the_refresh_recomputes_listed_buckets_from_raw_rows(three_hours: Store) -> None:
    async with three_hours.pool.connection() as conn:
        # What an older writer left: a stale row, its whole hour listed, and one device's
        # late rows of another hour listed.
        await conn.execute("UPDATE readings_1h SET value_max = -1, value_count = 1 WHERE bucket < %s",
                           (START + 2 * HOUR,))
        await conn.commit()
        await _note(conn, START)
        await _note(conn, START + HOUR, "air-1")
        await _assert_rollups_answer_like_raw(conn)  # listed buckets are served from raw rows
        report = await rollups.refresh(conn, now=T0)
        assert (report.buckets, report.devices) == ({"readings_1h": 1}, {"readings_1h": 1})
        assert await _dirty(conn) == 0
        cur = await conn.execute("SELECT bucket, value_count FROM readings_1h ORDER BY 1")
        assert await cur.fetchall() == [(START, 180), (START + HOUR, 180), (START + 2 * HOUR, 180)]
        await conn.commit()
        await _assert_rollup_is_raw_grouped(conn)


async def test_open_buckets_stay_listed_until_they_close(pg_store: Store) -> None:
    at = T0 + 3 * MIN
    for i in range(3):
        await pg_store.sink.write([uplink("air-1", at + i * STEP, {"pm25": 5.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        for _ in range(3):  # one entry per write, as the older writers noted them
            await _note(conn, T0)
        assert (await rollups.refresh(conn, now=at + MIN)).buckets == {"readings_1h": 0}
        assert await _dirty(conn) == 1  # compacted: one entry per open bucket
        hour = await queries.series(conn, "air-1", "pm25", T0, T0 + HOUR, HOUR, "count", source="readings_1h")
        assert [p.value for p in hour] == [3.0]
        assert (await rollups.refresh(conn, now=T0 + HOUR)).buckets == {"readings_1h": 1}
        assert await _dirty(conn) == 0
        await _assert_rollup_is_raw_grouped(conn)


async def test_rows_accepted_after_retention_add_to_their_bucket_and_are_never_recomputed(
        pg_store: Store) -> None:
    old = T0 - timedelta(days=100)
    await pg_store.sink.write([uplink("air-1", old, {"pm25": 1.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        report = await maintenance.maintain(conn, storage_settings(retention=timedelta(days=90)), now=T0)
        assert report.dropped
    # The same hour, after its raw rows were dropped: merged into what the rollup kept.
    await pg_store.sink.write([uplink("air-1", old + timedelta(seconds=30), {"pm25": 9.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        cur = await conn.execute("SELECT value_count, value_max FROM readings_1h")
        assert await cur.fetchall() == [(2, 9.0)]
        # A listed entry there must not be recomputed: only one of its two rows is still raw.
        await _note(conn, old.replace(minute=0, second=0, microsecond=0))
        report2 = await rollups.refresh(conn, now=T0)
        assert (report2.buckets, report2.skipped) == ({"readings_1h": 0}, 1)
        cur = await conn.execute("SELECT value_count, value_max FROM readings_1h")
        assert await cur.fetchall() == [(2, 9.0)]
