"""Storage benchmark: writer rows/s against raw binary COPY, and query latency.

    .venv/bin/python -m loadtests.storage_bench [--devices 1000] [--uplinks 20] [--batch 800]
        [--rounds 3] [--checkpoint-interval 1.0] [--writes-only]

Runs against a scratch database it creates and drops, on the plain-PostgreSQL
path (partitions, rollups refreshed from dirty buckets). Bounded to about a
minute and a half on a 2-core machine. Figures, not assertions: the machine
may be shared.

Write: the same kind of stream (air-quality uplinks, six readings each, each
transaction ``--batch`` uplinks from as many different devices) is written
two ways into the same table (same indexes), in ``--rounds`` rounds of
A-B-B-A (``loadtests.write_compare``, which also reports CPU per row of each):
- by the writer: ``ReadingsSink.write`` (COPY straight into ``readings``, with
  the staged insert-or-ignore fallback and dirty rollup buckets) plus
  ``ReadingsSink.flush`` (device state: last seen, latest value per metric)
  every ``--checkpoint-interval`` seconds beside the next writes, as the
  writer stage checkpoints, and once more at the end of each run, waited for
  on the clock (0: a flush after every write). Its clock includes turning
  records into rows;
- by a bare binary ``COPY readings FROM STDIN`` in transactions of the same
  size, its rows (with datetimes) prepared before its clock starts.
(The default stream repeats each device about 40 times a second. ``--devices 100000
--uplinks 2 --rounds 1`` has every device report once per checkpoint, the shape of the
``scale`` load scenario: the writer's worst case, see storage/README.md.)
Then the same rounds with 25 % of the writer's transactions re-delivered, and
the rollup refresh that the writer's background loop would run over
everything the writer wrote (its cost moved out of the write transaction, not
removed: reported with the combined rate). Query: 100,000 registered devices
with latest state, a day of 1-minute raw data for 300 devices, 30 days of
1-hour rollups for 2,000.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from citysense.records import RecordBatch
from loadtests.storage_common import (
    QUERY_DATA,
    latency_ms,
    print_query_latencies,
    scratch_database,
    uplinks,
    utc,
)
from loadtests.write_compare import Tally, report, timed
from storage import migrations, partitions, queries, rollups
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.schema import TIME_SERIES_TABLES
from storage.settings import StorageSettings

BASE = datetime(2031, 1, 1, tzinfo=UTC)
CHUNK = 800  # uplinks (Kafka records) per transaction by default: 4,800 readings (--batch)
CHECKPOINT_S = 1.0  # the writer stage's default checkpoint interval (--checkpoint-interval)
DAY = timedelta(days=1)

_RAW_COPY = sql.SQL(
    "COPY readings (device_id, metric, time, value, received_at, seq, quality) FROM STDIN (FORMAT BINARY)")
_RAW_TYPES = ["text", "text", "timestamptz", "float8", "timestamptz", "int8", "int2"]


def _chunks(stream: list[RecordBatch]) -> list[list[RecordBatch]]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def prepare_raw(stream: list[RecordBatch]) -> list[list[tuple[object, ...]]]:
    """Rows with datetimes built, per transaction: raw COPY's best case, prepared off the clock."""
    return [[(r.device_id, r.metric, utc(r.time_ns), r.value, utc(r.received_ns), r.seq, r.quality)
             for b in chunk for r in b.readings] for chunk in _chunks(stream)]


async def copy_prepared(pool: AsyncConnectionPool, prepared: list[list[tuple[object, ...]]]) -> int:
    for rows in prepared:
        async with pool.connection() as conn, conn.transaction(), conn.cursor() as cur, \
                cur.copy(_RAW_COPY) as copy:
            copy.set_types(_RAW_TYPES)
            for row in rows:
                await copy.write_row(row)
    return sum(len(r) for r in prepared)


async def raw_copy(pool: AsyncConnectionPool, stream: list[RecordBatch]) -> tuple[int, float]:
    prepared = prepare_raw(stream)
    t = time.perf_counter()
    rows = await copy_prepared(pool, prepared)
    return rows, time.perf_counter() - t


async def compare(pool: AsyncConnectionPool, sink: ReadingsSink, devices: int, per_device: int,
                  rounds: int, first_day: int, *, redelivered: bool = False) -> tuple[Tally, Tally, int]:
    """``rounds`` of A-B-B-A, each run on a fresh day of data; returns (raw, writer, days used).

    ``redelivered``: every third of the writer's transactions comes twice (25 % of its offered
    rows are duplicates; raw COPY cannot take one, so it gets fresh streams only)."""
    raw, written = Tally(), Tally()
    day = first_day
    for _ in range(rounds):
        for side in ("raw", "writer", "writer", "raw"):
            stream = uplinks(devices, per_device, BASE + day * DAY)
            day += 1
            if side == "raw":
                await timed(raw, copy_prepared(pool, prepare_raw(stream)))  # prepared off the clock
            else:
                chunks = _chunks(stream)
                await timed(written, _write_all(sink, _with_redeliveries(chunks) if redelivered else chunks))
    return raw, written, day - first_day


def report_redelivered(raw: Tally, dup: Tally) -> None:
    print(f"  25% re-delivered: writer {dup.rate:,.0f} offered rows/s, raw COPY around it "
          f"{raw.rate:,.0f}, ratio {dup.rate / raw.rate:.2f} ({dup.rows:,} offered; {dup.cpu_per_100k()})")


async def _write_all(sink: ReadingsSink, chunks: list[list[RecordBatch]]) -> int:
    offered, _, _ = await writer(sink, chunks)
    return offered


@dataclass
class Flushes:
    """The device-state flushes of every writer run so far (their time is on the writer's clock)."""

    count: int = 0
    seconds: float = 0.0
    devices: int = 0

    def summary(self) -> str:
        return (f"{self.count} device-state flushes, mean {self.seconds / self.count * 1000:.1f} ms "
                f"for {self.devices / self.count:,.0f} devices") if self.count else "no flushes"


FLUSHES = Flushes()


async def writer(sink: ReadingsSink, chunks: list[list[RecordBatch]]) -> tuple[int, int, float]:
    """Write the chunks, flushing device state as the writer stage checkpoints: every
    CHECKPOINT_S, each flush beside the next writes (one at a time), and once more at the end,
    waited for, so nothing is left pending off the clock."""
    offered = inserted = 0
    t = last_flush = time.perf_counter()
    flushing: asyncio.Task[None] | None = None
    for chunk in chunks:
        result = await sink.write(chunk)
        offered += result.readings_offered
        inserted += result.readings_inserted
        if time.perf_counter() - last_flush >= CHECKPOINT_S:
            if flushing is not None:
                await flushing
            flushing = asyncio.create_task(_flush(sink))
            last_flush = time.perf_counter()
    if flushing is not None:
        await flushing
    await _flush(sink)
    return offered, inserted, time.perf_counter() - t


async def _flush(sink: ReadingsSink) -> None:
    if not sink.pending_devices:
        return
    devices, t = sink.pending_devices, time.perf_counter()
    await sink.flush()
    FLUSHES.count += 1
    FLUSHES.seconds += time.perf_counter() - t
    FLUSHES.devices += devices


def _with_redeliveries(chunks: list[list[RecordBatch]]) -> list[list[RecordBatch]]:
    """Every third transaction is followed by a re-delivery of it (25% of rows are duplicates)."""
    out: list[list[RecordBatch]] = []
    for i, chunk in enumerate(chunks):
        out.append(chunk)
        if i % 3 == 2:
            out.append(chunk)
    return out


async def bench_writes(url: str, devices: int, per_device: int, rounds: int) -> None:
    settings = StorageSettings.model_construct()
    days = 8 * rounds
    pool = await open_pool(url, max_size=2)
    try:
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            for table in TIME_SERIES_TABLES:
                await partitions.ensure(conn, table, [BASE + i * DAY for i in range(days + 1)], DAY)
        sink = ReadingsSink(pool, settings)
        raw, written, used = await compare(pool, sink, devices, per_device, rounds, 0)
        dup_raw, dup, _ = await compare(pool, sink, devices, per_device, rounds, used, redelivered=True)
        async with pool.connection() as conn:
            t = time.perf_counter()
            refreshed = await rollups.refresh(conn, now=BASE + (days + 30) * DAY)
            secs_r = time.perf_counter() - t
    finally:
        await pool.close()
    print(f"write: {devices} devices x {per_device} uplinks x 6 readings per run, "
          f"{CHUNK} uplinks = {CHUNK * 6} readings per transaction, {rounds} rounds of A-B-B-A")
    report(raw, written)
    report_redelivered(dup_raw, dup)
    print(f"  checkpoint every {CHECKPOINT_S:g}s and at the end of each run: {FLUSHES.summary()}")
    stored = written.rows + 2 * rounds * devices * per_device * 6  # re-delivered runs: a stream each
    print(f"  rollup refresh (background) {stored / secs_r:>9,.0f} raw rows/s "
          f"({refreshed.summary()}, {secs_r:.1f}s)")
    combined = stored / (written.seconds + dup.seconds + secs_r)
    print(f"  writer + its refresh, back to back {combined:>9,.0f} rows/s  ratio {combined / raw.rate:.2f}"
          "  (total cost on the same cores)")


_GENERATE: tuple[sql.SQL, ...] = (
    *QUERY_DATA,
    sql.SQL("""INSERT INTO readings_1h
        SELECT 'dev-' || lpad(d::text, 6, '0'), 'pm25', h, 60 * 50.0, 60, 0, 100,
               h + interval '59 minutes', 50
        FROM generate_series(0, 1999) d,
             generate_series({now} - interval '30 days', {now} - interval '1 hour', interval '1 hour') h"""),
)


_DIRTY_TAIL = sql.SQL("""INSERT INTO rollup_dirty (rollup, bucket)
    SELECT 'readings_1h', h FROM generate_series({now} - interval '2 hours',
                                                 {now} - interval '1 hour', interval '1 hour') h""")


async def bench_queries(url: str) -> None:
    now = BASE + 30 * DAY
    pool = await open_pool(url, max_size=2)
    try:
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            for table in TIME_SERIES_TABLES:
                await partitions.ensure(conn, table, [now - i * DAY for i in range(1, 3)], DAY)
            t = time.perf_counter()
            for statement in _GENERATE:
                await conn.execute(statement.format(now=sql.Literal(now)))
            await conn.execute("VACUUM ANALYZE")
            print(f"query data generated in {time.perf_counter() - t:.1f}s: 100,000 devices, "
                  "200,000 latest values, 432,000 raw rows (300 devices x 1 day), "
                  "1,440,000 1-hour rollup rows (2,000 devices x 30 days)")
            await print_query_latencies(conn, now, "rollup")
            # A refresh lagging behind: the last 2 hours dirty, so the real-time union reads raw rows
            # for those buckets (120 minutes, 2 hours; raw data exists for 300 devices).
            await conn.execute(_DIRTY_TAIL.format(now=sql.Literal(now)))
            lagging = {
                "24-hour 1-hour avg series, last 2 h not refreshed":
                    lambda: queries.series(conn, "dev-000042", "pm25", now - DAY, now, timedelta(hours=1)),
                "readings by district over 30 days, last 2 h not refreshed":
                    lambda: queries.reading_counts(conn, "district", now - 30 * DAY, now),
            }
            for name, fn in lagging.items():
                median, worst = await latency_ms(fn, 7)
                print(f"  {name:<58} {median:8.1f} / {worst:8.1f}")
    finally:
        await pool.close()


async def main() -> None:
    global CHUNK, CHECKPOINT_S
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--uplinks", type=int, default=20, help="uplinks per device per run")
    parser.add_argument("--batch", type=int, default=CHUNK, help="uplinks (Kafka records) per transaction")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of raw, writer, writer, raw")
    parser.add_argument("--checkpoint-interval", type=float, default=CHECKPOINT_S,
                        help="seconds between device-state flushes (0: after every write)")
    parser.add_argument("--writes-only", action="store_true", help="skip the query latencies")
    args = parser.parse_args()
    CHUNK = args.batch
    CHECKPOINT_S = args.checkpoint_interval
    started = time.perf_counter()
    async with scratch_database("cs_bench") as url:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrations.migrate(conn, prefer_timescale=False)
        await bench_writes(url, args.devices, args.uplinks, args.rounds)
        if not args.writes_only:
            await bench_queries(url)
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    asyncio.run(main())
