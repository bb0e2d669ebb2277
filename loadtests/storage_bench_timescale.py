"""Storage benchmark on the TimescaleDB path: writer vs raw COPY, refresh, compression, queries.

    CITYSENSE_DATABASE_URL=postgresql://...server-with-timescaledb... \\
        .venv/bin/python -m loadtests.storage_bench_timescale [--devices 1000] [--uplinks 20] \\
            [--batch 800] [--rounds 3] [--checkpoint-interval 1.0]

The TimescaleDB counterpart of ``loadtests.storage_bench`` (same stream, same
rounds of A-B-B-A alternation of raw binary COPY and ``ReadingsSink.write``
into the same hypertable, same query cases). It needs a server where the
``timescaledb`` extension is available (the project's Debian PostgreSQL has
none) and refuses to run otherwise. The policy jobs of the scratch database
are paused so the scheduler does not refresh or compress under the clock;
continuous-aggregate refresh and compression are timed explicitly instead.
Figures, not assertions: the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

import loadtests.storage_bench as pg_bench
from loadtests.storage_bench import compare, report_redelivered
from loadtests.storage_common import QUERY_DATA, print_query_latencies, scratch_database
from loadtests.write_compare import report
from storage import migrations, timescale
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.schema import ROLLUPS, TIMESCALE
from storage.settings import StorageSettings

BASE = datetime(2031, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)

_GENERATE: tuple[sql.SQL, ...] = (
    *QUERY_DATA,
    # ... and 30 days of hourly data for 2,000 devices: 1.44 M rows of the 1-hour aggregate.
    sql.SQL("""INSERT INTO readings (device_id, metric, time, value, received_at)
        SELECT 'dev-' || lpad(d::text, 6, '0'), 'no2', h, d % 100, h
        FROM generate_series(0, 1999) d,
             generate_series({now} - interval '30 days', {now} - interval '1 hour', interval '1 hour') h"""),
)


async def _pause_policies(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                           "WHERE hypertable_name IS NOT NULL")


async def _refresh(url: str, lo: datetime, hi: datetime) -> float:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t = time.perf_counter()
        for rollup in ROLLUPS:
            await conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (rollup, lo, hi))
        return time.perf_counter() - t


async def bench_writes(url: str, devices: int, per_device: int, rounds: int) -> None:
    pool = await open_pool(url, max_size=2)
    try:
        sink = ReadingsSink(pool, StorageSettings.model_construct())
        raw, written, used = await compare(pool, sink, devices, per_device, rounds, 0)
        dup_raw, dup, _ = await compare(pool, sink, devices, per_device, rounds, used, redelivered=True)
    finally:
        await pool.close()
    secs_r = await _refresh(url, BASE - DAY, BASE + (2 * used + 1) * DAY)
    dup_stored = 2 * rounds * devices * per_device * 6  # re-delivered runs store a stream each
    total = raw.rows + written.rows + dup_raw.rows + dup_stored
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        before = await _size(conn)
        t = time.perf_counter()
        await conn.execute("SELECT count(compress_chunk(c)) FROM show_chunks('readings') c")
        secs_z = time.perf_counter() - t
        after = await _size(conn)
    print(f"write (TimescaleDB): {devices} devices x {per_device} uplinks x 6 readings per run, "
          f"{pg_bench.CHUNK} uplinks = {pg_bench.CHUNK * 6} readings per transaction, "
          f"{rounds} rounds of A-B-B-A")
    report(raw, written)
    report_redelivered(dup_raw, dup)
    print(f"  checkpoint every {pg_bench.CHECKPOINT_S:g}s and at the end of each run: "
          f"{pg_bench.FLUSHES.summary()}")
    print(f"  continuous-aggregate refresh (1 m + 1 h) {total / secs_r:>9,.0f} raw rows/s "
          f"({total:,} rows, {secs_r:.1f}s)")
    stored = written.rows + dup_stored
    combined = stored / (written.seconds + dup.seconds + secs_r * stored / total)
    print(f"  writer + its share of the refresh {combined:>9,.0f} rows/s  ratio {combined / raw.rate:.2f}")
    print(f"  readings heap + indexes {before / total:.1f} B/value; compressed (segment by device) "
          f"{after / total:.1f} B/value, x{before / after:.1f}, in {secs_z:.1f}s")


async def _size(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
    cur = await conn.execute("SELECT hypertable_size('readings')")
    row = await cur.fetchone()
    value = row[0] if row else None
    return value if isinstance(value, int) else 0


async def bench_queries(url: str) -> None:
    now = BASE + 40 * DAY
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t = time.perf_counter()
        for statement in _GENERATE:
            await conn.execute(statement.format(now=sql.Literal(now)))
        secs_g = time.perf_counter() - t
    secs_r = await _refresh(url, now - 31 * DAY, now)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("VACUUM ANALYZE")
    print(f"query data generated in {secs_g:.1f}s, aggregates refreshed in {secs_r:.1f}s: 100,000 devices, "
          "200,000 latest values, 432,000 raw rows (300 devices x 1 day x 1 min), "
          "1,440,000 raw rows and 1-hour aggregate rows (2,000 devices x 30 days x 1 h)")
    pool = await open_pool(url, max_size=2)
    try:
        async with pool.connection() as conn:
            await print_query_latencies(conn, now, "aggregate")
    finally:
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--uplinks", type=int, default=20, help="uplinks per device per run")
    parser.add_argument("--batch", type=int, default=pg_bench.CHUNK,
                        help="uplinks (Kafka records) per transaction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of raw, writer, writer, raw")
    parser.add_argument("--checkpoint-interval", type=float, default=pg_bench.CHECKPOINT_S,
                        help="seconds between device-state flushes (0: after every write)")
    args = parser.parse_args()
    pg_bench.CHUNK = args.batch  # _chunks reads it there
    pg_bench.CHECKPOINT_S = args.checkpoint_interval  # and writer this
    started = time.perf_counter()
    async with scratch_database("cs_bench_ts") as url:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrations.migrate(conn, prefer_timescale=True)
            if await migrations.backend(conn) != TIMESCALE:
                raise SystemExit("timescaledb is not available on this server: nothing to measure")
            await conn.commit()
            version = await timescale.installed_version(conn)
        print(f"timescaledb {version}")
        await _pause_policies(url)
        await bench_writes(url, args.devices, args.uplinks, args.rounds)
        await bench_queries(url)
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    asyncio.run(main())
