"""The simulators' own fault injection through the normaliser: exact counts per fault kind.

County devices (every kind: Cat1 JSON, NB-IoT raw and hex frames, chargers)
produce a time-ordered stream; ``simulators.faults`` injects every fault
kind at high ratios. Each clean, out-of-order, clock-skewed or late
(reconnect burst) uplink must yield its records exactly once; each
duplicate nothing; each malformed, truncated, ghost or oversize uplink one
dead letter with a reason its fault can produce. Runs over the in-memory
bus and over real Kafka.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import pytest

from brokers.base import Bus, KeyValue, TopicSpec
from brokers.kafka import KafkaBus
from brokers.memory import MemoryBus
from citysense.records import Envelope, RecordBatch, decode_batch, decode_dead_letter, encode
from citysense.settings import CommonSettings
from ingest.directory import StaticDirectory
from ingest.normaliser import Normaliser
from simulators.load import build_streams, time_ordered, with_faults
from simulators.scenario import CityScenario, load_scenario
from simulators.scenario_registry import city_registry
from tests.integration.test_normaliser_kafka import produce, read_topic, wait_for

NS = 1_000_000_000
RATIOS = {"duplicate": 0.05, "out_of_order": 0.05, "clock_skew": 0.05, "malformed": 0.04,
          "truncated": 0.04, "unknown_device": 0.04, "oversize": 0.03, "reconnect_burst": 0.04}
REASONS = {
    "malformed": {"malformed", "bad_crc", "truncated", "unsupported_version"},
    "truncated": {"truncated", "malformed", "bad_crc", "unsupported_version"},
    "unknown_device": {"unknown_device"},
    "oversize": {"oversize"},
}
Records = Counter[tuple[object, ...]]


def records_of(batch: RecordBatch) -> Records:
    out: Records = Counter((r.device_id, r.metric, r.seq, r.value) for r in batch.readings)
    out.update((s.device_id, s.connector, s.state, s.session_id) for s in batch.statuses)
    out.update((h.device_id, "health", h.rsrp_dbm, h.battery_v) for h in batch.health)
    return out


def simulated(uplinks: int = 3000, seed: int = 11) -> tuple[list[KeyValue], Records, dict[bytes, str],
                                                             StaticDirectory]:
    sc = load_scenario("county")
    assert isinstance(sc, CityScenario)
    by_kind: dict[str, list] = {}  # type: ignore[type-arg]
    for d in city_registry(sc).devices:
        by_kind.setdefault(d.kind, []).append(d)
    devices = [d for ds in by_kind.values() for d in ds[:25]]
    start = time.time_ns() - 3 * 86_400 * NS
    stream = itertools.islice(time_ordered(build_streams(devices, seed=seed, start_ns=start)), uplinks)
    faulty, injector = with_faults(stream, RATIOS, seed)
    records: list[KeyValue] = []
    expected: Records = Counter()
    faults: dict[bytes, str] = {}
    received = start
    for u in faulty:
        received = max(received, u.time_ns) + 1_000_000
        value = encode(Envelope(u.topic, u.device_id, received, u.payload))
        records.append((u.device_id.encode(), value))
        faults[value] = u.fault
        if u.fault in ("", "out_of_order", "clock_skew", "reconnect_burst"):
            expected.update(records_of(u.batch))
    assert all(injector.counts[f] > 0 for f in RATIOS), injector.counts
    return records, expected, faults, StaticDirectory.of((d.device_id, d.kind) for d in devices)


def check(readings: list[bytes], dead: list[bytes], expected: Records, faults: dict[bytes, str]) -> None:
    got: Records = Counter()
    for v in readings:
        got.update(records_of(decode_batch(v)))
    assert got == expected, (got - expected, expected - got)
    letters = [decode_dead_letter(v) for v in dead]
    per_fault = Counter(faults[d.original] for d in letters)
    assert per_fault == Counter(f for f in faults.values() if f in REASONS)
    for d in letters:
        assert d.reason_code in REASONS[faults[d.original]], (faults[d.original], d.reason_code)


async def _run(bus: Bus, s: CommonSettings, records: list[KeyValue], directory: StaticDirectory) -> None:
    await bus.create_topics([TopicSpec(s.topic_raw, s.raw_partitions),
                             TopicSpec(s.topic_readings, s.readings_partitions),
                             TopicSpec(s.topic_dlq, s.dlq_partitions)])
    if isinstance(bus, KafkaBus):
        await produce(bus, s.topic_raw, records)
    else:
        producer = bus.producer()
        await producer.start()
        await producer.send_batch(s.topic_raw, records)
    norm = Normaliser(bus, raw_topic=s.topic_raw, readings_topic=s.topic_readings, dlq_topic=s.topic_dlq,
                      group=f"{s.topic_raw}-n", max_records=700, directory=directory)
    task = asyncio.create_task(norm.run())
    try:
        await wait_for(lambda: norm.stage.records_committed >= len(records) or task.done())
    finally:
        norm.request_stop()
        await task


async def test_simulated_faults_over_the_memory_bus() -> None:
    records, expected, faults, directory = simulated()
    s = CommonSettings(topic_raw="raw", topic_readings="rd", topic_dlq="dlq", raw_partitions=4)
    bus = MemoryBus()
    await _run(bus, s, records, directory)
    readings = [m.value for p in bus._log("rd") for m in p]
    dead = [m.value for p in bus._log("dlq") for m in p]
    check(readings, dead, expected, faults)


@pytest.mark.services
async def test_simulated_faults_over_kafka(kafka_bus: KafkaBus, pipeline_settings: CommonSettings) -> None:
    records, expected, faults, directory = simulated(uplinks=6000, seed=5)
    await _run(kafka_bus, pipeline_settings, records, directory)
    good = sum(1 for v in faults.values() if v in ("", "out_of_order", "clock_skew", "reconnect_burst"))
    readings = await read_topic(kafka_bus, pipeline_settings.topic_readings, good)
    dead = await read_topic(kafka_bus, pipeline_settings.topic_dlq,
                            sum(1 for v in faults.values() if v in REASONS))
    check(readings, dead, expected, faults)
