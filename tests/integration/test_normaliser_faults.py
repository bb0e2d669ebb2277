"""A mixed raw stream with every fault kind, and what the normaliser must make of it.

``fault_stream`` builds raw-topic records (envelopes as the bridge writes
them) together with the exact expected outcome: the multiset of readings on
the readings topic and the count of dead letters per reason. The tests here
run it over the in-memory bus; ``test_normaliser_kafka.py`` runs it over real
Kafka. Faults are crafted here with the profiles' own codecs, so these tests
do not wait for the simulators' fault injection.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import msgspec

from brokers.base import KeyValue, TopicSpec
from brokers.memory import MemoryBus
from citysense.records import (
    QUALITY_CLOCK_CORRECTED,
    QUALITY_LATE,
    Envelope,
    Health,
    Reading,
    RecordBatch,
    decode_batch,
    decode_dead_letter,
    encode,
)
from ingest.codecs import codec_named
from ingest.directory import StaticDirectory
from ingest.normaliser import Normaliser
from ingest.topics import uplink_topic

NS = 1_000_000_000
AIR = ("pm25", "pm10", "no2", "o3", "temperature", "humidity")
ReadingKey = tuple[str, str, int, float, int]  # device, metric, time_ns, value, quality


@dataclass
class Stream:
    records: list[KeyValue] = field(default_factory=list)
    readings: Counter[ReadingKey] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    devices: dict[str, str] = field(default_factory=dict)
    good_uplinks: int = 0

    def raw(self, kind: str, device: str, payload: bytes, received_ns: int) -> None:
        env = Envelope(uplink_topic(kind, device), device, received_ns, payload)
        self.records.append((device.encode(), encode(env)))

    def expect(self, readings: tuple[Reading, ...], quality: int = 0, shift_ns: int = 0) -> None:
        for r in readings:
            self.readings[(r.device_id, r.metric, r.time_ns + shift_ns, r.value, quality)] += 1


def air_batch(device: str, seq: int, time_ns: int, **override: float) -> RecordBatch:
    values = {m: float(10 + i + seq % 7) for i, m in enumerate(AIR)} | override
    readings = tuple(Reading(device, m, time_ns, v, 0, seq) for m, v in values.items())
    return RecordBatch(device, 0, readings)


def env_batch(device: str, seq: int, base_s: int, samples: int = 3, spacing: int = 15) -> RecordBatch:
    readings = tuple(
        Reading(device, m, (base_s + spacing * i) * NS, float(20 + i + seq % 5), 0, seq)
        for i in range(samples) for m in ("pm25", "pm10", "noise_dba")
    )
    health = Health(device, (base_s + spacing * (samples - 1)) * NS, -101.5, 3.2, 1, 3.61)
    return RecordBatch(device, 0, readings, (), (health,))


def fault_stream(*, air_devices: int = 20, env_devices: int = 10, rounds: int = 10,
                 now_ns: int | None = None) -> Stream:
    """Good traffic with every fault kind sprinkled in, and the exact expected outcome."""
    now = now_ns or time.time_ns()
    now -= now % NS
    s = Stream()
    cat1, frame = codec_named("cat1-json"), codec_named("nbiot-frame")
    frame_hex = codec_named("nbiot-frame-hex")
    airs = [f"air-{i:04d}" for i in range(air_devices)]
    envs = [f"env-{i:04d}" for i in range(env_devices)]
    s.devices.update({d: "air" for d in airs} | {d: "env" for d in envs} | {"rain-0000": "rain"})
    for rnd in range(rounds):
        t = now - (rounds - rnd) * 60 * NS
        for i, d in enumerate(airs):
            b = air_batch(d, rnd, t)
            s.raw("air", d, cat1.encode(b), t + 50_000_000)
            s.expect(b.readings)
            s.good_uplinks += 1
            if (rnd + i) % 7 == 0:  # QoS 1 resend: same bytes, a later receive time
                s.raw("air", d, cat1.encode(b), t + 900_000_000)
        for d in envs:
            base = (t - 45 * NS) // NS
            b = env_batch(d, rnd, base)
            s.raw("env", d, frame.encode(b), t)
            s.expect(b.readings)
            s.good_uplinks += 1
    t = now - 30 * NS
    # out of order: seq 101 arrives before seq 100, both kept with their own times
    for seq, dt in ((101, 10), (100, 0)):
        b = air_batch(airs[0], seq, t + dt * NS)
        s.raw("air", airs[0], cat1.encode(b), now)
        s.expect(b.readings)
        s.good_uplinks += 1
    # clock skew: two days ahead -> moved to the received time, flagged
    b = air_batch(airs[1], 200, now + 2 * 86_400 * NS)
    s.raw("air", airs[1], cat1.encode(b), now)
    s.expect(b.readings, QUALITY_CLOCK_CORRECTED, shift_ns=-2 * 86_400 * NS)
    s.good_uplinks += 1
    # unset RTC (1970) on an NB-IoT device: the newest sample lands on the received time
    b = env_batch(envs[0], 300, 1_000, samples=2, spacing=300)
    s.raw("env", envs[0], frame.encode(b), now)
    s.expect(b.readings, QUALITY_CLOCK_CORRECTED, shift_ns=now - 1_300 * NS)  # 300 s apart: not late
    s.good_uplinks += 1
    # late: an NB-IoT backlog six hours old after a PSM outage keeps its real time
    b = env_batch(envs[1], 400, now // NS - 6 * 3600, samples=4)
    s.raw("env", envs[1], frame.encode(b), now)
    s.expect(b.readings, QUALITY_LATE)
    s.good_uplinks += 1
    # hex-carried frame from a rain point
    rb = RecordBatch("rain-0000", 0, (Reading("rain-0000", "rain_mm", (now // NS - 60) * NS, 1.5, 0, 7),))
    s.raw("rain", "rain-0000", frame_hex.encode(rb), now)
    s.expect(rb.readings)
    s.good_uplinks += 1
    # one reading out of range: the others are kept, the uplink is dead-lettered too
    b = air_batch(airs[2], 500, t, pm25=5000.0)
    s.raw("air", airs[2], cat1.encode(b), now)
    s.expect(tuple(r for r in b.readings if r.metric != "pm25"))
    s.dead["out_of_range"] += 1
    s.good_uplinks += 1
    # wholly bad uplinks
    good_frame = frame.encode(env_batch(envs[2], 600, now // NS - 60))
    s.raw("env", envs[2], good_frame[: len(good_frame) // 2], now)
    s.dead["truncated"] += 1
    s.raw("env", envs[2], good_frame[:-1] + bytes([good_frame[-1] ^ 0xFF]), now)
    s.dead["bad_crc"] += 1
    s.raw("air", airs[3], b'{"seq": 1, "ts": "soon", "m": {}}', now)
    s.dead["malformed"] += 1
    s.raw("air", airs[3], b"x" * (70 * 1024), now)
    s.dead["oversize"] += 1
    s.raw("air", "air-9999", cat1.encode(air_batch("air-9999", 1, t)), now)
    s.dead["unknown_device"] += 1
    s.raw("air", envs[3], cat1.encode(air_batch(envs[3], 1, t)), now)
    s.dead["kind_mismatch"] += 1
    s.raw("volcano", "volc-1", b"{}", now)
    s.dead["unknown_profile"] += 1
    s.records.append((b"junk", b"\xc1 not an envelope"))
    s.dead["bad_envelope"] += 1
    return s


async def drain(bus: MemoryBus, topic: str) -> list[bytes]:
    return [m.value for part in bus._log(topic) for m in part]


def flatten(values: list[bytes]) -> Counter[ReadingKey]:
    out: Counter[ReadingKey] = Counter()
    for v in values:
        for r in decode_batch(v).readings:
            out[(r.device_id, r.metric, r.time_ns, r.value, r.quality)] += 1
    return out


def reasons(values: list[bytes]) -> Counter[str]:
    return Counter(decode_dead_letter(v).reason_code for v in values)


async def _run_over_memory(stream: Stream, directory: StaticDirectory) -> tuple[MemoryBus, Normaliser]:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("raw", 4), TopicSpec("rd", 4), TopicSpec("dlq", 1)])
    producer = bus.producer()
    await producer.start()
    await producer.send_batch("raw", stream.records)
    norm = Normaliser(bus, raw_topic="raw", readings_topic="rd", dlq_topic="dlq", group="g",
                      max_records=97, directory=directory)
    task = asyncio.create_task(norm.run())
    for _ in range(500):
        if norm.stage.records_committed >= len(stream.records):
            break
        await asyncio.sleep(0.01)
    norm.request_stop()
    await task
    return bus, norm


async def test_every_fault_kind_over_the_memory_bus() -> None:
    stream = fault_stream()
    keys = Counter((d, m, t) for d, m, t, _, _ in stream.readings)
    assert max(keys.values()) == 1  # the database's unique key would drop a collision
    bus, norm = await _run_over_memory(stream, StaticDirectory(stream.devices))
    got = flatten(await drain(bus, "rd"))
    assert got == stream.readings
    assert all(n == 1 for n in got.values())
    assert reasons(await drain(bus, "dlq")) == stream.dead
    assert norm.readings_out == stream.good_uplinks
    assert norm.counters.duplicates == sum(
        1 for rnd in range(10) for i in range(20) if (rnd + i) % 7 == 0)
    assert norm.counters.clock_corrected == 2


async def test_dead_letters_keep_the_original_envelope_and_source() -> None:
    stream = fault_stream(air_devices=4, env_devices=4, rounds=1)
    bus, _ = await _run_over_memory(stream, StaticDirectory(stream.devices))
    letters = [decode_dead_letter(v) for v in await drain(bus, "dlq")]
    for d in letters:
        assert d.stage == "normalise" and d.source_topic == "raw"
        source = bus._log("raw")[d.source_partition][d.source_offset]
        assert source.value == d.original
        if d.reason_code != "bad_envelope":
            env = msgspec.msgpack.decode(d.original, type=Envelope)
            assert env.device_id == d.device_id or d.reason_code == "unknown_profile"
    assert len(letters) == sum(stream.dead.values())
