"""LTE-Cat1 devices: always connected, JSON uplinks, one sample per uplink.

Air micro-stations, automatic weather stations, water-quality sections and
bridge structural-health monitors. Values follow a daily cycle around the
profile's typical value with Gaussian noise, clamped to the profile's range
and rounded to 0.01 (exact through JSON).

Bridges (JT/T 1037 tiers): deck temperature follows the day; traffic load has
morning and evening peaks; deflection and strain respond to load and
temperature, cracks open as the deck cools, acceleration RMS/peak over the
60 s window scale with traffic. Injected :class:`BridgeEvent` s add crack
growth, abnormal deflection or vibration for alert rules to catch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from citysense.records import Reading, RecordBatch
from ingest.codecs import codec_named
from ingest.profiles import Profile
from ingest.topics import uplink_topic
from simulators.model import NS, DeviceStream, Uplink, day_phase, traffic_load


@dataclass(frozen=True, slots=True)
class BridgeEvent:
    kind: str  # crack_growth | abnormal_deflection | vibration
    start_ns: int
    end_ns: int
    magnitude: float  # mm of crack growth / mm of extra deflection / x acceleration


def _clamp(profile: Profile, values: dict[str, float]) -> dict[str, float]:
    out = {}
    for m in profile.metrics:
        out[m.name] = round(min(m.high, max(m.low, values[m.name])), 2)
    return out


def generic_values(profile: Profile, t: int, rng: random.Random) -> dict[str, float]:
    phase = day_phase(t)
    gauss = rng.gauss
    values: dict[str, float] = {}
    for m in profile.metrics:
        if m.name == "wind_dir_deg":
            values[m.name] = rng.uniform(0, 359.9)
        elif m.name == "rain_mm":
            values[m.name] = rng.expovariate(0.5) if rng.random() < 0.05 else 0.0
        elif m.name in ("temperature", "water_temp"):
            values[m.name] = m.typical + 6 * phase + gauss(0, 0.5)
        elif m.name == "humidity":
            values[m.name] = m.typical - 15 * phase + gauss(0, 2)
        else:
            values[m.name] = m.typical * (1 + 0.2 * phase) + gauss(0, abs(m.typical) * 0.1)
    return values


def bridge_values(t: int, rng: random.Random, events: Sequence[BridgeEvent]) -> dict[str, float]:
    temp = 17 + 8 * day_phase(t) + rng.gauss(0, 0.3)
    load = traffic_load(t) * rng.uniform(0.6, 1.2)
    truck = rng.random() < 0.1 * load
    crack = 0.15 + 0.004 * (17 - temp) + rng.gauss(0, 0.003)
    deflection = 6 * load + (9 if truck else 0) + 0.12 * (temp - 17) + rng.gauss(0, 0.3)
    strain = 90 * load + (60 if truck else 0) + 3.5 * (temp - 17) + rng.gauss(0, 3)
    rms = 0.005 + 0.04 * load + (0.03 if truck else 0) + abs(rng.gauss(0, 0.003))
    peak_factor = rng.uniform(3.0, 4.5)
    tilt = 0.01 + 0.0005 * (temp - 17) + rng.gauss(0, 0.001)
    wind = abs(2 + 1.5 * day_phase(t) + rng.gauss(0, 1.0))
    for e in events:
        if e.start_ns <= t < e.end_ns:
            frac = (t - e.start_ns) / (e.end_ns - e.start_ns)
            if e.kind == "crack_growth":
                crack += e.magnitude * frac
            elif e.kind == "abnormal_deflection":
                deflection += e.magnitude
                strain += e.magnitude * 8
            elif e.kind == "vibration":
                rms *= e.magnitude
        elif e.kind == "crack_growth" and t >= e.end_ns:
            crack += e.magnitude  # a crack does not close again
    return {
        "crack_width_mm": crack, "deflection_mm": deflection, "strain_ue": strain,
        "accel_rms": rms, "accel_peak": rms * peak_factor, "tilt_deg": tilt,
        "temperature": temp, "wind_speed": wind,
    }


class Cat1Device(DeviceStream):
    __slots__ = ("events", "interval_ns", "profile", "rng", "start_ns")

    def __init__(
        self, device_id: str, profile: Profile, rng: random.Random, *, start_ns: int,
        interval_ns: int | None = None, events: Sequence[BridgeEvent] = (),
    ) -> None:
        self.profile = profile
        self.rng = rng
        self.start_ns = start_ns - start_ns % 1_000_000  # JSON carries milliseconds
        interval = interval_ns or int(profile.report_interval_s * NS)
        self.interval_ns = max(1_000_000, interval - interval % 1_000_000)
        self.events = tuple(events)
        super().__init__(device_id, profile.kind)

    def _life(self) -> Iterator[Uplink]:
        profile, rng, device_id = self.profile, self.rng, self.device_id
        codec = codec_named(profile.codec)
        topic = uplink_topic(profile.kind, device_id)
        bridge = profile.kind == "bridge"
        t, seq = self.start_ns, 0
        while True:
            raw = bridge_values(t, rng, self.events) if bridge else generic_values(profile, t, rng)
            readings = tuple(
                Reading(device_id, name, t, value, 0, seq)
                for name, value in _clamp(profile, raw).items()
            )
            batch = RecordBatch(device_id=device_id, received_ns=0, readings=readings)
            yield Uplink(device_id, topic, codec.encode(batch), batch, t)
            seq = (seq + 1) & 0xFFFFFFFF
            t += self.interval_ns
