"""Devices that sample hourly or less often keep no per-device hourly rollup (migration 10).

A meter's rollup row would hold one reading each. On the PostgreSQL path such a device's hourly
series is read from raw rows, and retention folds its raw rows into the rollup before dropping
them; the answers stay those of a GROUP BY over every reading stored. The oracle is the
query's own raw source, and for the rollup table a GROUP BY over the other devices' raw rows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from storage import maintenance, queries, registry, rollups
from storage.db import Conn
from storage.readings_sink import ReadingsSink
from tests.storage.conftest import Store, storage_settings
from tests.storage.factories import T0, backlog, uplink
from tests.storage.registry_sample import sample_registry

pytestmark = pytest.mark.services

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
AGGREGATES: tuple[queries.Aggregate, ...] = ("avg", "min", "max", "count", "last")


def _device(device_id: str, interval: float, metadata: dict[str, Any]) -> dict[str, Any]:
    return {"device_id": device_id, "kind": "meter", "profile": "meter-nbiot", "network": "nb-iot",
            "site_id": None, "township": "Carlow", "district": "East", "lat": None, "lon": None,
            "report_interval_s": interval, "metadata": metadata}


def _registry(meter_metadata: dict[str, Any] | None = None) -> registry.Registry:
    data = sample_registry()
    data["devices"] += [
        _device("mtr-1", 14_400, meter_metadata or {"psm": True, "sample_interval_s": 3600}),
        _device("mtr-2", 7_200, {}),  # one sample per report, every two hours
        _device("env-1", 3_600, {"psm": True, "sample_interval_s": 300}),  # 12 samples an hour
    ]
    return registry.Registry.model_validate(data)


async def _classes(conn: Conn) -> dict[str, bool]:
    cur = await conn.execute("SELECT device_id, rollup_1h FROM devices ORDER BY 1")
    got = {str(r[0]): bool(r[1]) for r in await cur.fetchall()}
    await conn.commit()
    return got


async def _rollup_devices(conn: Conn) -> set[str]:
    cur = await conn.execute("SELECT DISTINCT device_id FROM readings_1h")
    got = {str(r[0]) for r in await cur.fetchall()}
    await conn.commit()
    return got


async def _series_like_raw(conn: Conn, device: str, start: Any, end: Any) -> list[list[queries.Point]]:
    """Every aggregate at 1 h and 6 h buckets from the rollup source, checked against raw rows."""
    out = []
    for bucket in (HOUR, 6 * HOUR):
        for agg in AGGREGATES:
            fast = await queries.series(conn, device, "volume", start, end, bucket, agg, source="readings_1h")
            raw = await queries.series(conn, device, "volume", start, end, bucket, agg, source="raw")
            assert [p.bucket for p in fast] == [p.bucket for p in raw], (device, bucket, agg)
            assert [p.value for p in fast] == pytest.approx([p.value for p in raw]), (device, bucket, agg)
            out.append(fast)
    await conn.commit()
    return out


async def test_the_class_is_set_at_registration_and_never_changes(pg_store: Store) -> None:
    async with pg_store.pool.connection() as conn:
        await registry.import_registry(conn, _registry())
        want = {"air-1": True, "air-2": True, "ev-1": True, "strain-1": True,
                "mtr-1": False, "mtr-2": False, "env-1": True}
        assert await _classes(conn) == want
        # A later import that would classify mtr-1 otherwise changes its metadata, not its class.
        await registry.import_registry(conn, _registry({"sample_interval_s": 60}))
        assert await _classes(conn) == want
        cur = await conn.execute("SELECT metadata FROM devices WHERE device_id = 'mtr-1'")
        assert await cur.fetchone() == ({"sample_interval_s": 60},)


def _meter_backlog(device: str, start: Any, values: list[float]) -> Any:
    """An NB-IoT wake-up: hourly samples since the last report, received at the last one."""
    return backlog(device, start, HOUR, "volume", values, received=start + (len(values) - 1) * HOUR)


async def test_a_meter_keeps_no_rollup_rows_and_answers_like_raw_rows(pg_store: Store) -> None:
    async with pg_store.pool.connection() as conn:
        await registry.import_registry(conn, _registry())
    start = T0 - DAY
    late = ReadingsSink(pg_store.pool, pg_store.settings, clock=lambda: T0 + DAY)  # every hour closed
    # merged at once (closed hours), noted open (the real clock: 2030 is open) and recomputed,
    # and the slow path (a re-delivery beside new rows)
    first = _meter_backlog("mtr-1", start, [float(i * i % 17) for i in range(4)])
    second = _meter_backlog("mtr-1", start + 4 * HOUR, [3.5, -1.0, 9.0, 2.0])
    air = [uplink("air-1", start + i * timedelta(minutes=10), {"volume": float(i % 5)}) for i in range(30)]
    assert (await late.write([first, *air[:15]])).readings_inserted == 19
    assert (await pg_store.sink.write([second, _meter_backlog("mtr-2", start, [1.0, 2.0]), *air[15:]])
            ).readings_inserted == 21
    redelivered = [first, _meter_backlog("mtr-1", start + 8 * HOUR, [7.0]), air[0],
                   uplink("air-1", start + 7 * HOUR, {"volume": 11.0})]
    assert (await late.write(redelivered)).readings_inserted == 2
    async with pg_store.pool.connection() as conn:
        for refreshed in (False, True):
            if refreshed:
                await rollups.refresh(conn, now=T0 + DAY)
            assert await _rollup_devices(conn) == {"air-1"}
            before = await _series_like_raw(conn, "mtr-1", start, T0)
            await _series_like_raw(conn, "mtr-2", start, T0)
            await _series_like_raw(conn, "air-1", start, T0)
            counts = await queries.reading_counts(conn, "kind", start, T0)
            await conn.commit()
            assert counts == {"air": 31, "meter": 11}
        assert [p.value for p in before[AGGREGATES.index("count")]] == [1.0] * 9  # an hour each


async def test_retention_folds_a_meters_rows_into_the_rollup_before_dropping_them(pg_store: Store) -> None:
    async with pg_store.pool.connection() as conn:
        await registry.import_registry(conn, _registry())
    old, recent = T0 - 100 * DAY, T0 - DAY
    await pg_store.sink.write([_meter_backlog("mtr-1", old, [1.0, 4.0, 2.0, 8.0]),
                               _meter_backlog("mtr-1", old + 2 * HOUR + timedelta(minutes=30), [5.0]),
                               _meter_backlog("mtr-1", recent, [3.0, 6.0]),
                               uplink("air-1", old, {"volume": 2.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        start = old - DAY
        before = await _series_like_raw(conn, "mtr-1", start, T0)
        counts = await queries.reading_counts(conn, "kind", start, T0)
        assert counts == {"air": 1, "meter": 7}
        report = await maintenance.maintain(conn, storage_settings(retention=timedelta(days=90)), now=T0)
        assert report.dropped
        cur = await conn.execute("SELECT count(*) FROM readings WHERE time < %s", (T0 - 90 * DAY,))
        assert await cur.fetchone() == (0,)
        cur = await conn.execute("SELECT bucket, value_count, value_sum, last_value FROM readings_1h"
                                 " WHERE device_id = 'mtr-1' ORDER BY 1")
        assert await cur.fetchall() == [(old, 1, 1.0, 1.0), (old + HOUR, 1, 4.0, 4.0),
                                        (old + 2 * HOUR, 2, 7.0, 5.0), (old + 3 * HOUR, 1, 8.0, 8.0)]
        after = [await queries.series(conn, "mtr-1", "volume", start, T0, bucket, agg, source="readings_1h")
                 for bucket in (HOUR, 6 * HOUR) for agg in AGGREGATES]
        assert after == before
        assert await queries.reading_counts(conn, "kind", start, T0) == counts


async def test_the_slow_path_merges_no_meter_rows(pg_store: Store) -> None:
    """Times before the server's clock, so the slow path (a re-delivery) merges instead of noting."""
    async with pg_store.pool.connection() as conn:
        await registry.import_registry(conn, _registry())
    past = T0.replace(year=2026, month=1)
    first = _meter_backlog("mtr-1", past, [1.0, 2.0])
    assert (await pg_store.sink.write([first, uplink("air-1", past, {"volume": 1.0})])).readings_inserted == 3
    again = [first, _meter_backlog("mtr-1", past + 2 * HOUR, [5.0]),
             uplink("air-1", past + HOUR, {"volume": 2.0})]
    assert (await pg_store.sink.write(again)).readings_inserted == 2  # the slow path
    async with pg_store.pool.connection() as conn:
        assert await _rollup_devices(conn) == {"air-1"}
        await _series_like_raw(conn, "mtr-1", past - DAY, past + DAY)
        await _series_like_raw(conn, "air-1", past - DAY, past + DAY)


async def test_a_meter_registered_after_its_rows_were_merged_keeps_its_rollup(pg_store: Store) -> None:
    """Without a directory the pipeline stores unregistered devices, whose late rows are merged;
    registering such a device as a meter later must not leave it answered twice."""
    past = T0.replace(year=2026, month=1)
    await pg_store.sink.write([_meter_backlog("mtr-1", past, [1.0, 2.0, 4.0])])
    async with pg_store.pool.connection() as conn:
        assert await _rollup_devices(conn) == {"mtr-1"}
        await registry.import_registry(conn, _registry())
        assert (await _classes(conn))["mtr-1"] is True and (await _classes(conn))["mtr-2"] is False
        series = await _series_like_raw(conn, "mtr-1", past - DAY, past + DAY)
        assert [p.value for p in series[AGGREGATES.index("count")]] == [1.0] * 3
