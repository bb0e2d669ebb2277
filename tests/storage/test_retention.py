"""Retention and partitions ahead (PostgreSQL path); the Timescale path is in test_timescale."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storage import maintenance, partitions
from tests.storage.conftest import Store, storage_settings
from tests.storage.factories import T0, charger, health, uplink

pytestmark = pytest.mark.services

DAY = timedelta(days=1)


async def test_retention_drops_old_partitions_and_keeps_rollups_longer(pg_store: Store) -> None:
    ages = [100, 91, 1, 0]
    await pg_store.sink.write([uplink("air-1", T0 - age * DAY, {"pm25": float(age)}) for age in ages])
    await pg_store.sink.write(
        [charger("ev-1", T0 - 100 * DAY, 1, "Available"), health("nb-1", T0 - 100 * DAY, -90)])
    settings = storage_settings(retention=timedelta(days=90), partitions_ahead=2)

    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        report = await maintenance.maintain(conn, settings, now=T0)
        assert sorted(report.dropped) == sorted([
            "readings_p20300221_000000", "readings_p20300302_000000",
            "charger_status_p20300221_000000", "device_health_p20300221_000000"])
        assert "readings_p20300603_000000" in report.created  # two days ahead
        names = [n for n, _, _ in await partitions.listing(conn, "readings")]
        cur = await conn.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'readings_p%' AND relkind = 'r' ORDER BY 1")
        assert [r[0] for r in await cur.fetchall()] == names
        cur = await conn.execute("SELECT time FROM readings ORDER BY time")
        assert [r[0] for r in await cur.fetchall()] == [T0 - DAY, T0]
        cur = await conn.execute("SELECT count(*) FROM charger_status")
        assert await cur.fetchone() == (0,)
        # Maintenance refreshed the rollup before dropping raw rows; the rollup outlives raw rows
        # (730 days by default). The hour at T0 is still open: it stays dirty (served from raw
        # rows) until a refresh after it closes.
        cur = await conn.execute("SELECT count(*) FROM readings_1h")
        assert await cur.fetchone() == (3,)

        again = await maintenance.maintain(conn, settings, now=T0)
        assert (again.created, again.dropped, again.rollup_rows_deleted) == ([], [], 0)

        later = await maintenance.maintain(conn, settings, now=T0 + 680 * DAY)
        assert later.rollup_rows_deleted == 2  # the hours 100 and 91 days before T0 are past 730 days
        cur = await conn.execute("SELECT count(*) FROM readings_1h")
        assert await cur.fetchone() == (2,)
        cur = await conn.execute("SELECT count(*) FROM readings")
        assert await cur.fetchone() == (0,)


async def test_a_late_row_for_a_dropped_range_is_still_accepted(pg_store: Store) -> None:
    settings = storage_settings(retention=timedelta(days=90))
    await pg_store.sink.write([uplink("air-1", T0 - 100 * DAY, {"pm25": 1.0})])
    async with pg_store.pool.connection() as conn:
        await conn.set_autocommit(True)
        await maintenance.maintain(conn, settings, now=T0)
    # The sink's cache still believes the partition exists; it recovers and recreates it.
    late = uplink("air-1", T0 - 100 * DAY + timedelta(minutes=1), {"pm25": 2.0})
    result = await pg_store.sink.write([late])
    assert result.readings_inserted == 1
