"""Alert engine throughput on real Kafka and PostgreSQL, one process.

Pre-fills a fresh readings topic with ``--uplinks`` record batches from
``--devices`` LTE-Cat1 air stations (six readings each), applies five rules
to them (a threshold, a windowed mean, a rate of change, a second threshold
and silence detection, so every device also sits on the deadline heap), and
runs one ``AlertEngine`` in this process until every record is committed:
state, transitions and outbox checkpointed to a scratch database, offsets
after. A small share of values cross thresholds, so transitions are written
too. Prints uplinks/s, readings/s, rule evaluations/s and the process CPU
per reading. The clock starts at the first batch handled (the consumer
group's join is not counted). Bounded: the run stops after ``--timeout`` s.

    .venv/bin/python -m loadtests.alerts_bench --devices 100000 --uplinks 200000
    .venv/bin/python -m loadtests.alerts_bench --live --rate 5000 --duration 10 --crossing-every 200

``--live`` produces at a steady rate (readings stamped with the wall clock)
and reports the latency from a reading to its 'fired' transition on the
alerts topic (the Kafka record's timestamp) and to its webhook delivery (a
local receiver, the delivery worker in the same process), p50/p99.

The machine running it may be shared: figures are for that machine, that day.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid

import psycopg

from alerts.delivery import Delivery
from alerts.engine import AlertEngine
from alerts.rule_file import parse
from alerts.rules_db import apply_rules
from alerts.settings import AlertSettings
from brokers.base import KeyValue, TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from citysense.records import Reading, RecordBatch, encode
from citysense.settings import CommonSettings, load_settings
from loadtests.storage_common import scratch_database
from storage import migrations
from storage.db import open_pool

NS = 1_000_000_000
AIR = ("pm25", "pm10", "no2", "o3", "temperature", "humidity")
RULES = """
rules:
  - {id: pm25-high, name: pm25, selector: {kind: [air]}, condition: {type: threshold, metric: pm25},
     grades: {yellow: 115, red: 250}, clear: 100}
  - {id: pm10-mean, name: pm10 mean, selector: {kind: [air]},
     condition: {type: aggregate, metric: pm10, fn: mean, window: 10m}, grades: {yellow: 150}}
  - {id: no2-rate, name: no2 rate, selector: {kind: [air]},
     condition: {type: rate, metric: no2, window: 10m, per: 1h}, grades: {yellow: 500}}
  - {id: hot, name: temperature, selector: {kind: [air]}, condition: {type: threshold, metric: temperature},
     grades: {yellow: 40, red: 45}, for: 2m}
  - {id: air-silent, name: silent, selector: {kind: [air]}, condition: {type: silence, grace: 2m}}
"""


async def _webhook_sink() -> tuple[asyncio.AbstractServer, str]:
    """A local receiver that answers 200 to every POST (the live run's webhook)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


def make_records(devices: int, uplinks: int, crossing_every: int) -> tuple[list[KeyValue], int]:
    now = time.time_ns() // NS * NS
    per_device = max(1, uplinks // devices)
    records: list[KeyValue] = []
    for i in range(uplinks):
        d, k = i % devices, i // devices
        dev = f"air-{d:06d}"
        t = now - (per_device - k) * 60 * NS
        high = crossing_every and i % crossing_every == 0
        values = (300.0 if high else 30.0 + (i % 7), 60.0, 30.0, 80.0, 18.0, 70.0)
        rs = tuple(Reading(dev, m, t, v, t) for m, v in zip(AIR, values, strict=True))
        records.append((dev.encode(), encode(RecordBatch(dev, t, rs))))
    return records, len(records) * len(AIR)


async def run(args: argparse.Namespace) -> None:
    common = load_settings(CommonSettings)
    bus = KafkaBus(KafkaConfig(bootstrap=common.kafka_bootstrap or "", client_id="alerts-bench", linger_ms=5))
    tag = uuid.uuid4().hex[:8]
    readings_topic = f"bench.{tag}.readings"
    await bus.create_topics([TopicSpec(readings_topic, args.partitions), TopicSpec(f"bench.{tag}.alerts", 1)])
    records, readings = make_records(args.devices, args.uplinks, args.crossing_every)
    producer = bus.producer()
    await producer.start()
    filled = time.monotonic()
    for i in range(0, len(records), 5000):
        await producer.send_batch(readings_topic, records[i:i + 5000])
    await producer.stop()
    print(f"prefilled {len(records):,} uplinks ({readings:,} readings) in {time.monotonic() - filled:.1f}s")
    async with scratch_database("alerts_bench") as url:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrations.migrate(conn, prefer_timescale=False)
            await apply_rules(conn, parse(RULES), source="bench", actor="bench")
        settings = AlertSettings(
            database_url=url, kafka_bootstrap=common.kafka_bootstrap, topic_readings=readings_topic,
            topic_alerts=f"bench.{tag}.alerts", readings_partitions=args.partitions,
            alerts_group=f"bench-{tag}", alerts_max_records=args.max_records,
            alerts_checkpoint_interval_s=args.checkpoint_s)
        pool = await open_pool(url, max_size=3)
        engine = AlertEngine(bus, pool, settings, group_wait_s=0)
        first: list[tuple[float, float]] = []
        handle = engine._handle

        async def timed(batches):  # type: ignore[no-untyped-def]
            if not first:
                first.append((time.monotonic(), time.process_time()))
            await handle(batches)

        engine.stage._handler = timed
        task = asyncio.create_task(engine.run())
        deadline = time.monotonic() + args.timeout
        while engine.stage.records_committed < len(records) and time.monotonic() < deadline:
            if task.done():
                break
            await asyncio.sleep(0.02)
        wall_end, cpu_end = time.monotonic(), time.process_time()
        heap = len(engine.heap)  # before the stop's revocation forgets the devices
        engine.request_stop()
        await task
        await pool.close()
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT count(*) FROM alert_transitions")
            row = await cur.fetchone()
            transitions = row[0] if row else 0
    wall, cpu = wall_end - first[0][0], cpu_end - first[0][1]
    done = engine.stage.records_committed
    done_readings = done * len(AIR)
    evaluations = engine.metrics.evaluations._value.get()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"devices {args.devices:,} x rules 5, uplinks committed {done:,}/{len(records):,}, "
          f"transitions {transitions:,}, deadline heap {heap:,}")
    print(f"wall {wall:.2f}s  uplinks/s {done / wall:,.0f}  readings/s {done_readings / wall:,.0f}  "
          f"evaluations/s {evaluations / wall:,.0f}")
    print(f"CPU {cpu:.2f}s ({cpu / wall:.0%} of one core)  CPU us/reading {cpu / done_readings * 1e6:.1f}  "
          f"CPU us/uplink {cpu / done * 1e6:.1f}  max RSS {rss:,.0f} MiB  loss {len(records) - done}")


async def live(args: argparse.Namespace) -> None:
    """Reading -> transition-on-the-alerts-topic latency at a steady uplink rate."""
    import json
    from datetime import datetime

    common = load_settings(CommonSettings)
    bus = KafkaBus(KafkaConfig(bootstrap=common.kafka_bootstrap or "", client_id="alerts-bench", linger_ms=5))
    tag = uuid.uuid4().hex[:8]
    readings_topic, alerts_topic = f"bench.{tag}.readings", f"bench.{tag}.alerts"
    await bus.create_topics([TopicSpec(readings_topic, args.partitions), TopicSpec(alerts_topic, 1)])
    server, hook = await _webhook_sink()
    os.environ.setdefault("CITYSENSE_ALERT_BENCH_SECRET", uuid.uuid4().hex)
    receiver = f"{{name: bench, url: '{hook}', secret_env: CITYSENSE_ALERT_BENCH_SECRET}}"
    live_rules = (f"receivers:\n  - {receiver}\n"
                  + RULES.replace("clear: 100}", "clear: 100, receivers: [bench]}"))
    async with scratch_database("alerts_bench") as url:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await migrations.migrate(conn, prefer_timescale=False)
            await apply_rules(conn, parse(live_rules), source="bench", actor="bench")
        settings = AlertSettings(
            database_url=url, kafka_bootstrap=common.kafka_bootstrap, topic_readings=readings_topic,
            topic_alerts=alerts_topic, readings_partitions=args.partitions, alerts_group=f"bench-{tag}",
            alerts_max_records=args.max_records, alerts_checkpoint_interval_s=args.checkpoint_s,
            deliver_poll_s=0.1)
        pool = await open_pool(url, max_size=4)
        engine = AlertEngine(bus, pool, settings, group_wait_s=0)
        delivery = Delivery(pool, settings)
        delivering = asyncio.create_task(delivery.run())
        task = asyncio.create_task(engine.run())
        joined = time.monotonic() + 60
        while not engine.stage.consumer.assignment() and time.monotonic() < joined:
            if task.done():
                await task
            await asyncio.sleep(0.05)  # polling the assignment, bounded
        producer = bus.producer()
        await producer.start()
        sent = 0
        start = time.monotonic()
        tick = 0.1
        per_tick = int(args.rate * tick)
        while time.monotonic() - start < args.duration:
            now = time.time_ns()
            batch = []
            for _ in range(per_tick):
                dev = f"air-{sent % args.devices:06d}"
                high = args.crossing_every and sent % args.crossing_every == 0
                values = (300.0 if high else 30.0, 60.0, 30.0, 80.0, 18.0, 70.0)
                rs = tuple(Reading(dev, m, now, v, now) for m, v in zip(AIR, values, strict=True))
                batch.append((dev.encode(), encode(RecordBatch(dev, now, rs))))
                sent += 1
            await producer.send_batch(readings_topic, batch)
            await asyncio.sleep(max(0.0, start + (sent / args.rate) - time.monotonic()))
        await producer.stop()
        deadline = time.monotonic() + 30
        while engine.stage.records_committed < sent and time.monotonic() < deadline:
            if task.done():
                break
            await asyncio.sleep(0.05)  # polling a counter, bounded by the deadline
        await asyncio.sleep(2 * args.checkpoint_s + 1)
        engine.request_stop()
        await task
        async with pool.connection() as conn:
            drained = time.monotonic() + 30
            while (await (await conn.execute(
                    "SELECT count(*) FROM alert_outbox WHERE state = 'pending'")).fetchone() or [0])[0]:
                if time.monotonic() > drained:
                    break
                await asyncio.sleep(0.1)  # polling the outbox, bounded
            cur = await conn.execute(
                """SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY d),
                          percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)
                   FROM (SELECT extract(epoch FROM delivered_at - (payload->>'device_time')::timestamptz)
                                * 1000 AS d
                         FROM alert_outbox WHERE state = 'delivered' AND payload->>'action' = 'fired') x""")
            webhook = await cur.fetchone()
        delivery.request_stop()
        await delivering
        await pool.close()
    server.close()
    consumer = bus.consumer([alerts_topic], f"bench-read-{tag}")
    await consumer.start()
    latencies: list[float] = []
    idle = time.monotonic()
    while time.monotonic() - idle < 3:
        got = await consumer.getmany(500, 5000)
        for messages in got.values():
            for m in messages:
                body = json.loads(m.value)
                if body["action"] == "fired" and body["condition"] == "threshold":
                    t = datetime.fromisoformat(body["device_time"]).timestamp() * 1000
                    latencies.append(m.timestamp_ms - t)
            idle = time.monotonic()
    await consumer.stop()
    latencies.sort()
    if not latencies:
        print("no transitions read back")
        return
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    print(f"live: {sent:,} uplinks at {args.rate:,}/s for {args.duration:.0f}s, committed "
          f"{engine.stage.records_committed:,}; reading -> alerts topic over {len(latencies):,} 'fired': "
          f"p50 {pick(0.5):.0f} ms  p99 {pick(0.99):.0f} ms  max {latencies[-1]:.0f} ms")
    if webhook and webhook[0]:
        print(f"reading -> webhook delivered over {webhook[0]:,} 'fired': p50 {webhook[1]:.0f} ms  "
              f"p99 {webhook[2]:.0f} ms  max {webhook[3]:.0f} ms (group_wait 0, delivery poll 0.1 s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--uplinks", type=int, default=200_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--max-records", type=int, default=5000)
    p.add_argument("--checkpoint-s", type=float, default=1.0)
    p.add_argument("--crossing-every", type=int, default=1000, help="every Nth uplink crosses (0: none)")
    p.add_argument("--timeout", type=float, default=180.0)
    p.add_argument("--live", action="store_true", help="latency at a steady rate instead of throughput")
    p.add_argument("--rate", type=int, default=5000, help="live: uplinks per second")
    p.add_argument("--duration", type=float, default=10.0, help="live: seconds of traffic")
    args = p.parse_args()
    asyncio.run(live(args) if args.live else run(args))


if __name__ == "__main__":
    main()
