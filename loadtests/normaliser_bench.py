"""Normaliser throughput on real Kafka, per process.

Pre-fills a fresh raw topic with N envelopes (LTE-Cat1 JSON air uplinks of
six readings, and NB-IoT frames of three buffered samples x three metrics
plus health; or, with ``--mix scale``, the simulators' uplinks of the ``scale``
scenario's kind mix: Cat1 JSON, NB-IoT frames raw and hex, OCPP chargers), then
runs one ``Normaliser`` in this process until every raw
record is committed. Prints uplinks/s, readings/s and the CPU the process
used (time.process_time and getrusage), then profiles a second, smaller run
with cProfile and prints the top costs. The clock starts at the first batch
handled, so the consumer group's join delay is not counted. Bounded: the
defaults finish well within 90 s on a loaded 2-core machine.

    .venv/bin/python loadtests/normaliser_bench.py --uplinks 200000
    .venv/bin/python loadtests/normaliser_bench.py --uplinks 200000 --mix scale
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import itertools
import math
import pstats
import resource
import sys
import time
import uuid
from pathlib import Path

from brokers.base import KeyValue, TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from citysense.records import Envelope, Health, Reading, RecordBatch, encode
from ingest.codecs import codec_named
from ingest.normaliser import Normaliser
from ingest.topics import uplink_topic

ROOT = Path(__file__).resolve().parent.parent
NS = 1_000_000_000
AIR = ("pm25", "pm10", "no2", "o3", "temperature", "humidity")


def bootstrap() -> str:
    for line in (ROOT / ".state" / "env").read_text().splitlines():
        if line.startswith("CITYSENSE_KAFKA_BOOTSTRAP="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("CITYSENSE_KAFKA_BOOTSTRAP not found in .state/env")


def make_records(n: int, nbiot_share: float, devices: int = 10_000) -> tuple[list[KeyValue], int]:
    cat1, frame = codec_named("cat1-json"), codec_named("nbiot-frame")
    now = time.time_ns() // NS * NS
    every = int(1 / nbiot_share) if nbiot_share > 0 else 0
    records: list[KeyValue] = []
    readings = 0
    for i in range(n):
        d = i % devices
        seq = i // devices
        t = now - (n // devices - seq) * 60 * NS
        if every and i % every == 0:
            dev, kind = f"env-{d:05d}", "env"
            rs = tuple(Reading(dev, m, t - (30 - 15 * k) * NS, 20.0 + k, 0, seq)
                       for k in range(3) for m in ("pm25", "pm10", "noise_dba"))
            payload = frame.encode(RecordBatch(dev, 0, rs, (), (Health(dev, t, -99.0, 4.0, 0, 3.6),)))
        else:
            dev, kind = f"air-{d:05d}", "air"
            rs = tuple(Reading(dev, m, t, 10.0 + j + (i % 13) * 0.5, 0, seq) for j, m in enumerate(AIR))
            payload = cat1.encode(RecordBatch(dev, 0, rs))
        readings += len(rs)
        env = Envelope(uplink_topic(kind, dev), dev, t + 20_000_000, payload)
        records.append((dev.encode(), encode(env)))
    return records, readings


def scale_records(n: int, devices: int, faults: bool) -> tuple[list[KeyValue], int]:
    """``n`` uplinks of the scale scenario's devices, one round after another (e2e's load shape),
    device times ending around now; received 20 ms after the device sent them."""
    from simulators.load import build_streams, round_robin, with_faults
    from simulators.scenario import ScaleScenario, load_scenario
    from simulators.scenario_registry import scale_devices

    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    specs = scale_devices(sc, devices)
    streams = build_streams(specs, seed=sc.seed, start_ns=time.time_ns(),
                            back_intervals=math.ceil(n / len(specs)))
    uplinks = round_robin(streams)
    if faults:
        uplinks = with_faults(uplinks, sc.faults.as_dict(), sc.seed)[0]
    records: list[KeyValue] = []
    readings = 0
    for u in itertools.islice(uplinks, n):
        if not u.fault:
            readings += len(u.batch.readings)
        env = Envelope(u.topic, u.device_id, u.time_ns + 20_000_000, u.payload)
        records.append((u.device_id.encode(), encode(env)))
    return records, readings


async def prefill(bus: KafkaBus, topic: str, records: list[KeyValue]) -> None:
    producer = bus.producer()
    await producer.start()
    try:
        chunk = 5000
        for i in range(0, len(records), chunk):
            await producer.send_batch(topic, records[i : i + chunk])
    finally:
        await producer.stop()


async def run_once(bus: KafkaBus, records: list[KeyValue], partitions: int, max_records: int,
                   profiler: cProfile.Profile | None = None) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    raw, rd, dlq = f"bench.{tag}.raw", f"bench.{tag}.readings", f"bench.{tag}.dlq"
    await bus.create_topics([TopicSpec(raw, partitions), TopicSpec(rd, partitions), TopicSpec(dlq, 1)])
    t = time.monotonic()
    await prefill(bus, raw, records)
    fill_s = time.monotonic() - t
    norm = Normaliser(bus, raw_topic=raw, readings_topic=rd, dlq_topic=dlq, group=f"bench-{tag}",
                      max_records=max_records)
    first: list[tuple[float, float]] = []
    handle = norm._handle

    async def timed(batches):  # type: ignore[no-untyped-def]
        if not first:
            first.append((time.monotonic(), time.process_time()))
            if profiler:
                profiler.enable()
        await handle(batches)

    norm.stage._handler = timed
    task = asyncio.create_task(norm.run())
    deadline = time.monotonic() + 120
    while norm.stage.records_committed < len(records) and time.monotonic() < deadline:
        if task.done():
            break
        await asyncio.sleep(0.02)  # polling a counter, bounded by the deadline
    wall_end, cpu_end = time.monotonic(), time.process_time()
    if profiler:
        profiler.disable()
    norm.request_stop()
    await task
    wall0, cpu0 = first[0]
    wall, cpu = wall_end - wall0, cpu_end - cpu0
    return {
        "uplinks": norm.stage.records_committed, "readings": norm.counters.readings,
        "dead": norm.dead_letters, "wall_s": wall, "cpu_s": cpu, "fill_s": fill_s,
        "uplinks_s": norm.stage.records_committed / wall, "readings_s": norm.counters.readings / wall,
        "cpu_share": cpu / wall,
    }


async def main(args: argparse.Namespace) -> None:
    bus = KafkaBus(KafkaConfig(bootstrap=bootstrap(), client_id="bench", linger_ms=args.linger_ms))
    if args.mix == "scale":
        records, readings = scale_records(args.uplinks, args.devices, args.faults)
        what = f"scale mix of {args.devices} devices{', faults' if args.faults else ''}"
    else:
        records, readings = make_records(args.uplinks, args.nbiot_share)
        what = f"{args.nbiot_share:.0%} NB-IoT frames"
    print(f"raw records: {len(records)} uplinks carrying {readings} readings "
          f"({what}), {args.partitions} partitions", flush=True)
    r = await run_once(bus, records, args.partitions, args.max_records)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(f"prefill {r['fill_s']:.1f}s (not measured)")
    print(f"normalised {r['uplinks']:.0f} uplinks -> {r['readings']:.0f} readings, {r['dead']:.0f} dead "
          f"in {r['wall_s']:.2f}s wall, {r['cpu_s']:.2f}s CPU ({r['cpu_share']:.0%} of one core)")
    print(f"RESULT uplinks/s={r['uplinks_s']:.0f} readings/s={r['readings_s']:.0f} "
          f"cpu_s_per_100k_uplinks={100_000 * r['cpu_s'] / r['uplinks']:.2f} "
          f"us_cpu_per_uplink={1e6 * r['cpu_s'] / r['uplinks']:.1f} "
          f"us_cpu_per_reading={1e6 * r['cpu_s'] / max(1, r['readings']):.2f}")
    print(f"process rusage: user={ru.ru_utime:.1f}s sys={ru.ru_stime:.1f}s maxrss={ru.ru_maxrss // 1024} MiB")
    if args.profile_uplinks:
        profiler = cProfile.Profile()
        small = records[: args.profile_uplinks]
        p = await run_once(bus, small, args.partitions, args.max_records, profiler)
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).sort_stats(args.sort)
        stats.print_stats(args.top)
        print(f"\nprofile run (cProfile on, slower): {p['uplinks_s']:.0f} uplinks/s; "
              f"top {args.top} by own time:")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    print("\nnote: shared 2-core machine (Kafka broker and other engineers' work run beside it); "
          "figures are indicative, not a capacity claim.")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uplinks", type=int, default=200_000)
    ap.add_argument("--mix", choices=("air-nbiot", "scale"), default="air-nbiot",
                    help="air JSON + NB-IoT frames (--nbiot-share), or the scale scenario's kinds")
    ap.add_argument("--devices", type=int, default=100_000, help="--mix scale: device count")
    ap.add_argument("--faults", action="store_true", help="--mix scale: the scenario's fault ratios")
    ap.add_argument("--nbiot-share", type=float, default=0.2)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--max-records", type=int, default=10_000)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--profile-uplinks", type=int, default=60_000)
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--sort", default="tottime", help="cProfile sort key (tottime, cumulative)")
    asyncio.run(main(ap.parse_args()))
    sys.exit(0)
