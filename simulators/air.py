"""LTE-Cat1 air-quality micro-stations: plausible values, JSON uplinks.

Deterministic for a seed: device ``i`` of a run draws from its own
``random.Random(seed, i)`` stream, so the same seed gives the same uplinks.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from citysense.records import Reading, RecordBatch
from ingest.codecs import codec_named
from ingest.profiles import AIR_CAT1, Metric
from ingest.topics import uplink_topic
from simulators.model import Uplink

__all__ = ["Uplink", "air_device_ids", "air_uplinks"]


def _value(m: Metric, day_phase: float, rng: random.Random) -> float:
    value = m.typical * (1 + 0.2 * day_phase) + rng.gauss(0, m.typical * 0.1)
    return round(min(m.high, max(m.low, value)), 2)


def air_device_ids(count: int, prefix: str = "air-") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(count)]


def air_uplinks(
    device_id: str, count: int, *, start_ns: int, interval_ns: int, seed: int = 0
) -> Iterator[Uplink]:
    """``count`` uplinks of one device, one per ``interval_ns``, sequence numbers from 0."""
    rng = random.Random(f"{seed}:{device_id}")
    codec = codec_named(AIR_CAT1.codec)
    topic = uplink_topic(AIR_CAT1.kind, device_id)
    for seq in range(count):
        time_ns = start_ns + seq * interval_ns
        # Values are rounded to 0.01 so they survive JSON and float compare exactly in tests.
        day_phase = math.sin(2 * math.pi * ((time_ns / 1e9) % 86_400) / 86_400)
        readings = tuple(
            Reading(device_id, m.name, time_ns, _value(m, day_phase, rng), 0, seq)
            for m in AIR_CAT1.metrics
        )
        batch = RecordBatch(device_id=device_id, received_ns=0, readings=readings)
        yield Uplink(device_id, topic, codec.encode(batch), batch, time_ns)
