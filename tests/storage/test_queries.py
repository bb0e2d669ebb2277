"""The query layer answers correctly, and rollups answer like raw rows (on both backends)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage import queries, registry
from tests.storage.conftest import Store
from tests.storage.factories import T0, charger, uplink
from tests.storage.registry_sample import sample_json

pytestmark = pytest.mark.services

STEP = timedelta(seconds=20)
DAY = timedelta(days=1)
AGGREGATES: tuple[queries.Aggregate, ...] = ("avg", "min", "max", "count", "last")


def _value(i: int) -> float:
    return float((i * 7) % 50) + 0.25


@pytest.fixture
async def city(store: Store) -> Store:
    async with store.pool.connection() as conn:
        await registry.import_registry(conn, registry.parse(sample_json()))
    start = T0 - DAY
    rows = [uplink("air-1", start + i * STEP, {"pm25": _value(i)}) for i in range(int(DAY / STEP))]
    for chunk in range(0, len(rows), 1000):
        await store.sink.write(rows[chunk : chunk + 1000])
    await store.sink.write([uplink("air-2", T0 - timedelta(minutes=10), {"pm25": 7.0, "no2": 3.0})])
    await store.sink.write([charger("ev-1", T0 - timedelta(hours=2), 1, "Available")])
    await store.sink.flush()
    return store


async def test_latest_per_device_with_filters(city: Store) -> None:
    async with city.pool.connection() as conn:
        every = await queries.latest_per_device(conn)
        south = await queries.latest_per_device(conn, district="South")
        pm25 = await queries.latest_per_device(conn, metric="pm25", kind="air")
        one = await queries.latest_per_device(conn, device_ids=["air-1"])
    assert [(v.device_id, v.metric) for v in every] == [
        ("air-1", "pm25"), ("air-2", "no2"), ("air-2", "pm25")]
    last_i = int(DAY / STEP) - 1
    assert (one[0].time, one[0].value) == (T0 - STEP, _value(last_i))
    assert [(v.device_id, v.metric, v.value) for v in south] == [
        ("air-2", "no2", 3.0), ("air-2", "pm25", 7.0)]
    assert [v.device_id for v in pm25] == ["air-1", "air-2"]


async def test_device_counts_by_group_and_status(city: Store) -> None:
    async with city.pool.connection() as conn:
        by_status = await queries.device_counts(conn, "status", now=T0)
        by_district = await queries.device_counts(conn, "district", now=T0)
        by_kind = await queries.device_counts(conn, "kind", now=T0)
        by_township = await queries.device_counts(conn, "township", now=T0 - timedelta(minutes=9))
    assert [(c.group, c.total) for c in by_status] == [("offline", 3), ("online", 1)]
    assert [(c.group, c.total, c.online, c.offline) for c in by_district] == [
        ("North", 2, 1, 1), ("South", 2, 0, 2)]
    assert [(c.group, c.online) for c in by_kind] == [("air", 1), ("bridge_strain", 0), ("charger", 0)]
    # Nine minutes before T0, air-2 (60 s interval, heard at T0-10min) is still within 3 intervals.
    assert [(c.group, c.online) for c in by_township] == [("Ashby", 1), ("Burton", 1)]


@pytest.mark.parametrize(("bucket", "rollup"), [
    (timedelta(minutes=1), "raw"),  # under an hour: raw rows, by primary key (migration 9)
    (timedelta(minutes=15), "raw"),
    (timedelta(hours=1), "readings_1h"),
    (timedelta(hours=6), "readings_1h"),
    (timedelta(seconds=90), "raw"),
])
async def test_series_from_rollups_equals_series_from_raw_rows(
    city: Store, bucket: timedelta, rollup: queries.Source,
) -> None:
    start, end = T0 - DAY + timedelta(seconds=30), T0  # an unaligned start: whole buckets are covered
    assert queries.choose_source(start, end, bucket) == rollup
    async with city.pool.connection() as conn:
        for agg in AGGREGATES:
            fast = await queries.series(conn, "air-1", "pm25", start, end, bucket, agg)
            raw = await queries.series(conn, "air-1", "pm25", start, end, bucket, agg, source="raw")
            assert [p.bucket for p in fast] == [p.bucket for p in raw]
            assert [p.value for p in fast] == pytest.approx([p.value for p in raw]), agg
    assert len(raw) == -(-DAY // bucket)
    assert raw[0].bucket == T0 - DAY


async def test_one_minute_series_over_a_day_has_the_expected_values(city: Store) -> None:
    async with city.pool.connection() as conn:
        counts = await queries.series(conn, "air-1", "pm25", T0 - DAY, T0, timedelta(minutes=1), "count")
        maxima = await queries.series(conn, "air-1", "pm25", T0 - DAY, T0, timedelta(minutes=1), "max")
    assert len(counts) == 1440 and {p.value for p in counts} == {3.0}
    assert maxima[0].value == max(_value(i) for i in range(3))


async def test_reading_counts_by_district_over_thirty_days(city: Store) -> None:
    async with city.pool.connection() as conn:
        by_district = await queries.reading_counts(conn, "district", T0 - 30 * DAY, T0)
        no2 = await queries.reading_counts(conn, "kind", T0 - 30 * DAY, T0, metric="no2")
    assert by_district == {"North": int(DAY / STEP), "South": 2}
    assert no2 == {"air": 1}


async def test_series_rejects_bad_requests(city: Store) -> None:
    async with city.pool.connection() as conn:
        with pytest.raises(ValueError, match="positive"):
            await queries.series(conn, "air-1", "pm25", T0, T0 - DAY, timedelta(minutes=1))
        with pytest.raises(ValueError, match="buckets"):
            await queries.series(conn, "air-1", "pm25", T0 - 400 * DAY, T0, timedelta(minutes=1))
        with pytest.raises(ValueError, match="cannot serve"):
            await queries.series(conn, "air-1", "pm25", T0 - DAY, T0, timedelta(minutes=1),
                                 source="readings_1h")
