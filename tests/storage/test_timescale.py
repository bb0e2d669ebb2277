"""TimescaleDB path: hypertables, compression, retention and continuous aggregates.

Skipped, with the reason, when the ``timescaledb`` extension is not
installed in the project's PostgreSQL (Debian's PostgreSQL has none, so CI
runs the plain-PostgreSQL path; the shared tests in this package run on
both paths via the parametrised ``store`` fixture).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from storage import maintenance, queries, registry, timescale
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.schema import TIMESCALE
from tests.storage.conftest import Store, migrated, storage_settings
from tests.storage.factories import T0, backlog, real_now, uplink
from tests.storage.registry_sample import sample_json

pytestmark = [pytest.mark.services, pytest.mark.timescale]

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
STEP = timedelta(seconds=20)
AGGREGATES: tuple[queries.Aggregate, ...] = ("avg", "min", "max", "count", "last")


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
    assert caggs == [("readings_1h", False)]  # migration 9 dropped readings_1m
    jobs = await _rows(ts_store, "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs "
                                 "WHERE proc_name LIKE 'policy_%' ORDER BY 1, 2")
    procs = {p for p, _ in jobs}
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= procs


async def test_maintain_reconciles_policies_with_settings(ts_store: Store) -> None:
    jobs = ("SELECT hypertable_name, proc_name, job_id FROM timescaledb_information.jobs "
            "WHERE hypertable_name IS NOT NULL ORDER BY 1, 2")
    first = await _rows(ts_store, jobs)
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        unchanged = await maintenance.maintain(conn, ts_store.settings)
        assert await _rows(ts_store, jobs) == first  # nothing cancelled or re-created
        settings = storage_settings(retention=timedelta(days=30))
        report = await maintenance.maintain(conn, settings)
        after = await _rows(ts_store, jobs)
        assert await timescale.configure_policies(conn, settings) == []
        again = await maintenance.maintain(conn, settings)
    assert unchanged.backend == report.backend == again.backend == TIMESCALE
    assert await _rows(ts_store, jobs) == after
    replaced = {(name, proc) for (name, proc, a), (_, _, b) in zip(first, after, strict=True) if a != b}
    assert replaced == {(t, "policy_retention") for t in ("readings", "charger_status", "device_health")}
    config = await _rows(ts_store, "SELECT config->>'drop_after' FROM timescaledb_information.jobs "
                                   "WHERE proc_name = 'policy_retention' AND hypertable_name = 'readings'")
    assert config == [("30 days",)]


async def _run_refresh_policy(conn: psycopg.AsyncConnection[tuple[object, ...]], rollup: str) -> None:
    """Run the refresh policy's job here (waiting out a run the scheduler may have started)."""
    cur = await conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_refresh_continuous_aggregate' AND hypertable_name = %s", (rollup,))
    row = await cur.fetchone()
    assert row is not None
    for attempt in range(50):
        try:
            await conn.execute("CALL run_job(%s)", (row[0],))
            return
        except psycopg.errors.LockNotAvailable:  # "due to a concurrent refresh"
            if attempt == 49:
                raise
            await asyncio.sleep(0.2)


async def test_late_rows_reach_the_continuous_aggregates(ts_store: Store) -> None:
    now = real_now()
    await ts_store.sink.write([uplink("nb-1", now, {"level": 50.0})])
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        await _run_refresh_policy(conn, "readings_1h")  # materializes up to the last closed hour
    # A backlog from the day before yesterday: below the watermark, inside the late-arrival window.
    start = queries.covering(now - 2 * DAY + 3 * HOUR, now, HOUR)[0]
    await ts_store.sink.write([backlog("nb-1", start, timedelta(minutes=15), "level", [1.0, 2.0, 3.0, 4.0],
                                       received=now)])
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        await _run_refresh_policy(conn, "readings_1h")  # what the scheduler runs every minute
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


async def test_the_scheduler_runs_every_policy_without_errors(ts_store: Store) -> None:
    """The extension's own scheduler (not ``run_job`` in our session) runs each policy successfully.

    ``run_job`` runs a job inside the caller's portal; the scheduler runs it in a background
    worker, which is the path production relies on (and the one that broke on PostgreSQL
    15.20 with TimescaleDB 2.28.3: every job failed with "cannot drop portal").
    """
    jobs_query = ("SELECT j.job_id, j.proc_name, coalesce(s.total_runs, 0), s.last_run_status "
                  "FROM timescaledb_information.jobs j "
                  "LEFT JOIN timescaledb_information.job_stats s USING (job_id) "
                  "WHERE j.proc_name LIKE 'policy_%' AND j.hypertable_name IS NOT NULL ORDER BY 1")
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        before = {job: runs for job, _, runs, _ in await (await conn.execute(jobs_query)).fetchall()}
        assert len(before) == 3 * 2 + 2  # tables: compression, retention; the rollup: refresh, retention
        await conn.execute("SELECT alter_job(job_id, next_start => now()) FROM timescaledb_information.jobs "
                           "WHERE proc_name LIKE 'policy_%' AND hypertable_name IS NOT NULL")
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            rows = await (await conn.execute(jobs_query)).fetchall()
            if all(runs > before[job] for job, _, runs, _ in rows):
                break
            assert asyncio.get_running_loop().time() < deadline, f"the scheduler did not run: {rows}"
            await asyncio.sleep(0.5)
    assert {(proc, status) for _, proc, _, status in rows} == {
        ("policy_compression", "Success"), ("policy_retention", "Success"),
        ("policy_refresh_continuous_aggregate", "Success")}


async def _day_of_air(store: Store) -> None:
    async with store.pool.connection() as conn:
        await registry.import_registry(conn, registry.parse(sample_json()))
    rows = [uplink("air-1", T0 - DAY + i * STEP, {"pm25": float((i * 7) % 50) + 0.25})
            for i in range(int(DAY / STEP))]
    for chunk in range(0, len(rows), 1000):
        await store.sink.write(rows[chunk : chunk + 1000])


async def _assert_rollups_answer_like_raw_rows(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    start, end = T0 - DAY + timedelta(seconds=30), T0
    for bucket in (HOUR, 6 * HOUR):
        assert queries.choose_source(start, end, bucket) == "readings_1h"
        for agg in AGGREGATES:
            fast = await queries.series(conn, "air-1", "pm25", start, end, bucket, agg)
            raw = await queries.series(conn, "air-1", "pm25", start, end, bucket, agg, source="raw")
            assert len(raw) == -(-DAY // bucket)
            assert [p.bucket for p in fast] == [p.bucket for p in raw], (bucket, agg)
            assert [p.value for p in fast] == pytest.approx([p.value for p in raw]), (bucket, agg)
    assert await queries.reading_counts(conn, "district", T0 - 30 * DAY, T0) == {"North": int(DAY / STEP)}


async def test_partly_materialized_rollups_answer_like_raw_rows(ts_store: Store) -> None:
    """Materialized buckets and the real-time part after the watermark join without gap or overlap."""
    await _day_of_air(ts_store)
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        # the first half of the day, up to an odd hour
        await conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)",
                           ("readings_1h", T0 - 2 * DAY, T0 - 11 * HOUR - timedelta(minutes=7)))
        materialized = {}
        for rollup in ("readings_1h",):
            cur = await conn.execute(
                "SELECT materialization_hypertable_schema, materialization_hypertable_name "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = %s", (rollup,))
            row = await cur.fetchone()
            assert row is not None
            table = sql.Identifier(str(row[0]), str(row[1]))
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table))
            materialized[rollup] = (await cur.fetchone() or (0,))[0]
        # Whole buckets inside the window: 12 hours; the rest is real time.
        assert materialized == {"readings_1h": 12}
        await _assert_rollups_answer_like_raw_rows(conn)


async def test_compressed_chunks_stay_idempotent_and_answer_like_raw_rows(ts_store: Store) -> None:
    await _day_of_air(ts_store)
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('readings') c")
        assert await cur.fetchone() == (2,)  # the day straddles two daily chunks
    first = [uplink("air-1", T0 - DAY + i * STEP, {"pm25": float((i * 7) % 50) + 0.25}) for i in range(50)]
    assert (await ts_store.sink.write(first)).readings_inserted == 0  # a re-delivery meets compressed rows
    late = uplink("air-1", T0 - DAY + timedelta(seconds=5), {"pm25": 1.0})
    result = await ts_store.sink.write([late, late, *first])
    assert (result.readings_offered, result.readings_inserted) == (52, 1)
    async with await psycopg.AsyncConnection.connect(ts_store.url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM readings")
        assert await cur.fetchone() == (int(DAY / STEP) + 1,)
        await conn.execute("DELETE FROM readings WHERE time = %s", (T0 - DAY + timedelta(seconds=5),))
        await conn.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", ("readings_1h",))
        await _assert_rollups_answer_like_raw_rows(conn)
