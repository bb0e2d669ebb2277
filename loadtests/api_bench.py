"""Query API under 50 concurrent operators (locust, headless) on a populated scratch database.

    .venv/bin/python loadtests/api_bench.py [--devices 100000] [--series-devices 200]
        [--hours 24] [--days 30] [--hourly-devices 10000] [--users 50] [--duration 60]
        [--alerts 2000]

Builds a scratch database: ``--devices`` registered devices spread over the county's
districts (every one reported once, so all have latest values and a status),
``--series-devices`` of them with one uplink a minute (six metrics) over the last ``--hours``
and, before that, one pm25 value a minute back to ``--days`` ago; ``--hourly-devices`` others
with one pm25 value an hour over ``--days``; rollups recomputed by ``storage.rollups.refresh``
over the whole range (series with hourly buckets read ``readings_1h``, finer ones raw rows); ``--alerts``
alerts (a quarter open). The history is generated inside PostgreSQL (``INSERT .. SELECT`` from
``generate_series``, a day at a time): no Python per row, no network per row. Starts ``citysense api`` as its
own process, runs locust's ``Operator`` users (``loadtests/api_locust.py``) against it,
and prints requests/s and p50/p99 per request kind. The scratch database is dropped after.
Every process shares this machine's cores: read figures as this machine's, under load.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from citysense.records import Reading, RecordBatch
from storage import apikeys, migrations, partitions, registry, rollups
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.schema import BUCKET_ORIGIN, ROLLUPS
from storage.settings import StorageSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from loadtests.storage_common import scratch_database, uplinks

DISTRICTS = [("渠江片区", 30.83, 106.97), ("三汇片区", 30.99, 106.92), ("土溪片区", 30.74, 107.09),
             ("有庆片区", 30.89, 107.17), ("涌兴片区", 30.66, 106.89), ("临巴片区", 31.06, 107.07)]
KINDS = ("air", "meter", "charger", "env", "rain")


def device_ids(n: int, series: int) -> list[str]:
    """The series devices carry ``storage_common.uplinks``' ids (air-00000 ..), the rest bench-.."""
    return [f"air-{i:05d}" if i < series else f"bench-{i:06d}" for i in range(n)]


def _registry(ids: list[str]) -> registry.Registry:
    rng = random.Random(1)
    devices = []
    for i, device_id in enumerate(ids):
        name, lat, lon = DISTRICTS[i % len(DISTRICTS)]
        devices.append(registry.DeviceIn(
            device_id=device_id, kind=KINDS[i % len(KINDS)], profile="bench", network="nb-iot",
            township=f"{name}-{i % 7}", district=name, lat=lat + rng.uniform(-0.08, 0.08),
            lon=lon + rng.uniform(-0.08, 0.08), report_interval_s=3600))
    return registry.Registry(scenario="api-bench", seed=1, devices=devices)


async def populate(url: str, args: argparse.Namespace) -> str:
    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrations.migrate(conn, prefer_timescale=False)
        await registry.import_registry(conn, _registry(device_ids(args.devices, args.series_devices)))
        _, token = await apikeys.create_key(conn, "bench-operator", "operator")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    pool = await open_pool(url, max_size=2)
    try:
        sink = ReadingsSink(pool)
        ids = device_ids(args.devices, args.series_devices)[args.series_devices:]
        for i in range(0, len(ids), 5000):  # one recent uplink per other device: latest values, status
            await sink.write([_one(d, now) for d in ids[i:i + 5000]])
        await sink.flush()
        per = args.hours * 60
        series = uplinks(args.series_devices, per, now - timedelta(minutes=per), 60)
        for i in range(0, len(series), 20_000):
            await sink.write(series[i:i + 20_000])
        await sink.flush()
    finally:
        await pool.close()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t = time.monotonic()
        history = await _history(conn, args, now)
        print(f"  history: {history:,} rows in {time.monotonic() - t:.0f} s", flush=True)
        t = time.monotonic()
        await rollups.refresh(conn, now=now + timedelta(hours=1))
        print(f"  rollups refreshed in {time.monotonic() - t:.0f} s", flush=True)
        await _alerts(conn, args.alerts, now)
        await conn.execute("VACUUM ANALYZE")
        counts = {}
        for table in ("readings", "readings_1h"):
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
            counts[table] = (await cur.fetchone() or (0,))[0]
    print(f"populated in {time.monotonic() - started:.0f} s: {args.devices} devices; "
          f"{args.series_devices} x {args.hours} h of 1-minute uplinks (six metrics) and "
          f"{args.days} days of 1-minute pm25; {args.hourly_devices} x {args.days} days of hourly "
          f"pm25; {args.alerts} alerts; rows: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    return token


# 1-minute pm25 for the series devices (air-..) from ``lo`` to ``hi`` (the last ``--hours`` come
# from the sink, six metrics) and hourly pm25 for the next ``hourly`` devices (bench-..).
_MINUTE_HISTORY = sql.SQL(
    """INSERT INTO readings (device_id, metric, time, value, received_at)
       SELECT 'air-' || lpad(d::text, 5, '0'), 'pm25', t, (d + extract(minute FROM t)) %% 100, t
       FROM generate_series(0, %(series)s - 1) d,
            generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - interval '1 minute',
                            interval '1 minute') t""")
_HOURLY_HISTORY = sql.SQL(
    """INSERT INTO readings (device_id, metric, time, value, received_at)
       SELECT 'bench-' || lpad(d::text, 6, '0'), 'pm25', t, (d + extract(hour FROM t)) %% 100, t
       FROM generate_series(%(series)s, %(series)s + %(hourly)s - 1) d,
            generate_series(%(lo)s::timestamptz, %(hi)s::timestamptz - interval '1 hour',
                            interval '1 hour') t""")


async def _history(conn: psycopg.AsyncConnection[object], args: argparse.Namespace, now: datetime) -> int:
    """``--days`` of history, a day at a time (bounded statements), partitions made first;
    every rollup bucket of the range is marked dirty, as the writer would have done."""
    day = timedelta(days=1)
    first = now - args.days * day
    recent = now - timedelta(hours=args.hours)  # the sink already wrote (and marked) this part
    width = StorageSettings.model_fields["chunk_interval"].default
    await partitions.ensure(conn, "readings", [partitions.floor_time(first + i * width, width)
                                               for i in range((now - first) // width + 2)], width)
    hourly_devices = min(args.hourly_devices, args.devices - args.series_devices)
    rows = 0
    lo = partitions.floor_time(first, timedelta(hours=1))
    while lo < now:
        hi = min(lo + day, now)
        params = {"series": args.series_devices, "hourly": hourly_devices, "lo": lo, "hi": min(hi, recent)}
        if lo < recent:
            rows += (await conn.execute(_MINUTE_HISTORY, params)).rowcount
        params["hi"] = partitions.floor_time(hi, timedelta(hours=1))
        rows += (await conn.execute(_HOURLY_HISTORY, params)).rowcount
        lo = hi
    for name, width_r in ROLLUPS.items():
        await conn.execute(
            "INSERT INTO rollup_dirty (rollup, bucket) SELECT %s, b FROM generate_series("
            "date_bin(%s, %s::timestamptz, %s::timestamptz), %s::timestamptz, %s) b",
            (name, width_r, first, BUCKET_ORIGIN, recent, width_r))
    return rows


def _one(device_id: str, now: datetime) -> RecordBatch:
    ns = int(now.timestamp()) * 1_000_000_000
    return RecordBatch(device_id=device_id, received_ns=ns,
                       readings=(Reading(device_id, "pm25", ns, 12.0, ns),
                                 Reading(device_id, "no2", ns, 30.0, ns)))


async def _alerts(conn: psycopg.AsyncConnection[object], n: int, now: datetime) -> None:
    rows = [(f"rule-{i // 200}", f"air-{i % 200:05d}", "threshold", "pm25",
             "firing" if i % 4 == 0 else "resolved",
             1 + i % 4, now - timedelta(minutes=i)) for i in range(n)]
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO alerts (rule_id, device_id, condition, metric, state, grade, started_at)
               VALUES (%s, %s, %s, %s, %s, %s, %s)""", rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(url: str, token: str, args: argparse.Namespace) -> None:
    port = _free_port()
    env = {**os.environ, "CITYSENSE_DATABASE_URL": url, "CITYSENSE_API_PORT": str(port),
           "CITYSENSE_API_RATE_PER_S": "100000", "CITYSENSE_API_RATE_BURST": "100000",
           "CITYSENSE_API_LIVE": os.environ.get("CITYSENSE_API_LIVE", "false")}
    exe = Path(sys.executable).parent
    log = Path(tempfile.gettempdir()) / f"citysense-api-bench-{port}.log"
    api = subprocess.Popen([str(exe / "citysense"), "api"], env=env, stdout=subprocess.DEVNULL,
                           stderr=log.open("w"))
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(150):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"the API did not start; see {log}")
        devices = ",".join(device_ids(args.series_devices, args.series_devices))
        _warm_up(base, token, devices.split(","))
        with tempfile.TemporaryDirectory() as tmp:
            prefix = str(Path(tmp) / "api")
            locust_env = {**os.environ, "CITYSENSE_BENCH_KEY": token, "CITYSENSE_BENCH_DEVICES": devices,
                          "CITYSENSE_BENCH_DISTRICTS": ",".join(d[0] for d in DISTRICTS)}
            subprocess.run([str(exe / "locust"), "-f", str(Path(__file__).with_name("api_locust.py")),
                            "--headless", "-u", str(args.users), "-r", str(args.users),
                            "-t", f"{args.duration}s",
                            "--host", base, "--csv", prefix, "--only-summary", "--loglevel", "WARNING"],
                           env=locust_env, check=False, timeout=args.duration + 120,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _report(Path(prefix + "_stats.csv"), args)
            failures = Path(prefix + "_failures.csv").read_text().splitlines()[1:4]
            if failures:
                print("failures (first kinds):", *failures, sep="\n  ")
    finally:
        api.terminate()
        api.wait(timeout=20)


def _warm_up(base: str, token: str, devices: list[str]) -> None:
    """One request of each kind first: the pool's connections, caches and the overview are
    ready before the clock starts (the figures are of a running API, not of its first second)."""
    with httpx.Client(base_url=base, headers={"X-API-Key": token}, timeout=60) as c:
        c.get("/api/v1/overview")
        c.get("/api/v1/devices", params={"limit": 100})
        c.get("/api/v1/alerts", params={"state": "open", "limit": 50})
        for d in devices[:20]:
            c.get(f"/api/v1/devices/{d}/latest")
            c.get(f"/api/v1/devices/{d}/series", params={"metric": "pm25", "bucket": "60"})


def _report(stats: Path, args: argparse.Namespace) -> None:
    print(f"{args.users} operators for {args.duration} s, {args.devices} devices "
          "(one uvicorn worker; locust, PostgreSQL and the API share this machine's cores)")
    print(f"{'request':<20}{'count':>8}{'fail':>6}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    with stats.open() as f:
        for row in csv.DictReader(f):
            print(f"{row['Name']:<20}{row['Request Count']:>8}{row['Failure Count']:>6}"
                  f"{float(row['Requests/s']):>8.1f}{row['50%']:>8}{row['99%']:>8}"
                  f"{float(row['Max Response Time']):>8.0f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--series-devices", type=int, default=200)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--hourly-devices", type=int, default=10_000)
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=int, default=60)
    args = parser.parse_args()
    async with scratch_database("cs_api_bench") as url:
        token = await populate(url, args)
        await asyncio.to_thread(run, url, token, args)


if __name__ == "__main__":
    asyncio.run(main())
