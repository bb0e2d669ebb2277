"""TimescaleDB path: hypertables, compression, retention and continuous aggregates.

Skipped, with the reason, when the ``timescaledb`` extension is not
installed in the project's PostgreSQL (Debian's PostgreSQL has none, so CI
runs the plain-PostgreSQL path; the shared tests in this package run on
both paths via the parametrised ``store`` fixture).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest

from storage import maintenance, queries
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.schema import TIMESCALE
from tests.storage.conftest import Store, migrated, storage_settings
from tests.storage.factories import T0, backlog, real_now, uplink

pytestmark = [pytest.mark.services, pytest.mark.timescale]

HOUR = timedelta(hours=1)


@pytest.fixture
async def ts_store(empty_database: str) -> AsyncIterator[Store]:
    await migrated(empty_database, TIMESCALE)  # skips with the reason when the extension is missing
    settings = storage_settings()
    pool = await open_pool(empty_database, max_size=2)
    try:
        yield Store(empty_database, pool, ReadingsSink(pool, settings), TIMESCALE, settings)
    finally:
        await pool.close()


async def _rows(store: Store, query: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(store.url, autocommit=True) as conn:
        cur = await conn.execute(query)
        return list(await cur.fetchall())


async def test_hypertables_compression_and_policies(ts_store: Store) -> None:
    hypertables = await _rows(ts_store, "SELECT hypertable_name, compression_enabled "
                                        "FROM timescaledb_information.hypertables ORDER BY 1")
    assert ("readings", True) in hypertables and ("charger_status", True) in hypertables
    segment = await _rows(ts_store, "SELECT attname FROM timescaledb_information.compression_settings "
                                    "WHERE hypertable_name = 'readings' AND segmentby_column_index = 1")
    assert segment == [("device_id",)]
    caggs = await _rows(ts_store, "SELECT view_name, materialized_only "
                                  "FROM timescaledb_information.continuous_aggregates ORDER BY 1")
    assert caggs == [("readings_1h", False), ("readings_1m", False)]
    jobs = await _rows(ts_store, "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs "
                                 "WHERE proc_name LIKE 'policy_%' ORDER BY 1, 2")
    procs = {p for p, _ in jobs}
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= procs


async def test_maintain_reconciles_policies_with_settings(ts_store: Store) -> None:
    settings = storage_settings(retention=timedelta(days=30))
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        report = await maintenance.maintain(conn, settings)
        again = await maintenance.maintain(conn, settings)
    assert report.backend == again.backend == TIMESCALE
    config = await _rows(ts_store, "SELECT config->>'drop_after' FROM timescaledb_information.jobs "
                                   "WHERE proc_name = 'policy_retention' AND hypertable_name = 'readings'")
    assert config == [("30 days",)]


async def test_late_rows_reach_the_continuous_aggregates(ts_store: Store) -> None:
    await ts_store.sink.write([uplink("nb-1", T0, {"level": 50.0})])
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")
    start = T0 - 3 * HOUR
    await ts_store.sink.write([backlog("nb-1", start, timedelta(minutes=15), "level", [1.0, 2.0, 3.0, 4.0],
                                       received=T0)])
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        # The refresh policy covers the late-arrival window; run what it runs.
        await conn.execute("CALL refresh_continuous_aggregate('readings_1h', NULL, NULL)")
        points = await queries.series(conn, "nb-1", "level", start, start + HOUR, HOUR, "count",
                                      source="readings_1h")
    assert [(p.bucket, p.value) for p in points] == [(start, 4.0)]


async def test_retention_drops_old_chunks(ts_store: Store) -> None:
    now = real_now()
    await ts_store.sink.write([uplink("air-1", now - timedelta(days=d), {"pm25": 1.0}) for d in (100, 1)])
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        cur = await conn.execute("SELECT job_id FROM timescaledb_information.jobs "
                                 "WHERE proc_name = 'policy_retention' AND hypertable_name = 'readings'")
        row = await cur.fetchone()
        assert row is not None
        await conn.execute("CALL run_job(%s)", (row[0],))
        cur = await conn.execute("SELECT count(*) FROM readings")
        assert await cur.fetchone() == (1,)
