"""Helpers shared by the storage benchmarks: a scratch database, timing, stream generation."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from citysense.records import Reading, RecordBatch
from citysense.settings import CommonSettings, load_settings

METRICS = ("pm25", "pm10", "no2", "o3", "temperature", "humidity")


def base_url() -> str:
    settings = load_settings(CommonSettings)
    if settings.database_url is None:
        raise SystemExit("CITYSENSE_DATABASE_URL is not set (run `citysense services up`)")
    return settings.database_url.get_secret_value()


def with_dbname(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})


@contextlib.asynccontextmanager
async def scratch_database(prefix: str) -> AsyncIterator[str]:
    """A database created for the run and dropped afterwards, whatever happens."""
    url = base_url()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(url, name)
    finally:
        await drop_database(url, name)


async def drop_database(url: str, name: str) -> None:
    """Drop ``name``, waiting out the server's own workers in it.

    ``WITH (FORCE)`` refuses, for a role without ``pg_signal_backend``, while an
    autovacuum worker (or TimescaleDB's scheduler) is in the database, and the
    benchmarks leave work for autovacuum. A plain ``DROP DATABASE`` cancels
    autovacuum itself, and fails with ObjectInUse while anything else is still
    connected; so try both, for up to ten seconds, rather than leave the
    scratch database behind."""
    force = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    plain = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for attempt in range(50):
            try:
                await conn.execute(force if attempt % 2 == 0 else plain)
                return
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectInUse):
                if attempt == 49:
                    raise
                await asyncio.sleep(0.2)


def uplinks(devices: int, per_device: int, start: datetime, step_s: int = 60) -> list[RecordBatch]:
    """Air-quality uplinks (six readings each), interleaved by device as a fleet sends them."""
    out: list[RecordBatch] = []
    t0 = int(start.timestamp()) * 1_000_000_000
    for i in range(per_device):
        for d in range(devices):
            t = t0 + (i * step_s + d % step_s) * 1_000_000_000
            device = f"air-{d:05d}"
            readings = tuple(
                Reading(device, m, t, float((i * 7 + d + k) % 100), t + 500_000_000, i)
                for k, m in enumerate(METRICS))
            out.append(RecordBatch(device, t + 500_000_000, readings))
    return out


def utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


async def latency_ms(fn: Callable[[], Awaitable[object]], repeat: int) -> tuple[float, float]:
    """(median, max) wall time of ``repeat`` calls after one warm-up, in milliseconds."""
    await fn()
    times: list[float] = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


async def print_query_latencies(conn: psycopg.AsyncConnection[Any], now: datetime, rollup: str) -> None:
    """The issue's query cases, timed (median / max of 7), over the generated data set.

    ``rollup`` names what serves long ranges on this backend ("rollup" or "aggregate").
    """
    from storage import queries

    day = timedelta(days=1)
    minute = timedelta(minutes=1)
    cases: dict[str, Callable[[], Awaitable[object]]] = {
        "latest per device, all 100,000 devices (200,000 values)":
            lambda: queries.latest_per_device(conn),
        "latest per device, one district (5,000 devices)":
            lambda: queries.latest_per_device(conn, district="district-7"),
        f"24-hour 1-hour avg series (1-hour {rollup})":
            lambda: queries.series(conn, "dev-000042", "pm25", now - day, now, 60 * minute),
        "24-hour 1-minute avg series (raw rows: no 1-minute rollup since migration 9)":
            lambda: queries.series(conn, "dev-000042", "pm25", now - day, now, minute, source="raw"),
        f"readings by district over 30 days (1-hour {rollup})":
            lambda: queries.reading_counts(conn, "district", now - 30 * day, now),
        "devices by district, online/offline (100,000)":
            lambda: queries.device_counts(conn, "district", now=now),
        "devices by status (100,000)":
            lambda: queries.device_counts(conn, "status", now=now),
    }
    print("query latency (median / max of 7, ms):")
    for name, fn in cases.items():
        median, worst = await latency_ms(fn, 7)
        print(f"  {name:<58} {median:8.1f} / {worst:8.1f}")


# The query benchmarks' data set, shared by both backends: 100,000 registered devices with
# latest values and last-seen times, and a day of 1-minute pm25 for 300 of them. Each bench
# adds what its long-range queries read (rollup rows, or raw rows for the aggregates).
QUERY_DATA: tuple[sql.SQL, ...] = (
    sql.SQL("""INSERT INTO devices (device_id, kind, profile, network, township, district, report_interval_s)
        SELECT 'dev-' || lpad(g::text, 6, '0'), (ARRAY['air', 'noise', 'water', 'charger'])[1 + g % 4],
               'bench', 'lte-cat1', 'township-' || (g % 200), 'district-' || (g % 20), 60
        FROM generate_series(0, 99999) g"""),
    # latest values of pm25 and no2 (arrays sorted by metric, times in Unix microseconds)
    sql.SQL("""INSERT INTO device_state (device_id, last_seen, last_time, latest_metrics, latest_times,
                                         latest_values, latest_received, latest_time)
        SELECT device_id, {now} - (abs(hashtext(device_id)) % 400) * interval '1 second', {now},
               array_agg(m ORDER BY m), array_agg((extract(epoch FROM t) * 1000000)::bigint ORDER BY m),
               array_agg(v ORDER BY m), array_agg((extract(epoch FROM {now}) * 1000000)::bigint),
               max(t)
        FROM (SELECT device_id, m, {now} - (hashint4(length(device_id) + ascii(m)) % 600)
                                            * interval '1 second' AS t,
                     (hashtext(device_id || m) % 1000) / 10.0 AS v
              FROM devices, unnest(ARRAY['pm25', 'no2']) m) x
        GROUP BY device_id"""),
    sql.SQL("""INSERT INTO readings (device_id, metric, time, value, received_at)
        SELECT 'dev-' || lpad(d::text, 6, '0'), 'pm25', t, (d + extract(minute FROM t)) % 100, t
        FROM generate_series(0, 299) d,
             generate_series({now} - interval '1 day', {now} - interval '1 minute',
                             interval '1 minute') t"""),
)
