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

Fast path: one batch of 16-bit random draws per uplink
(:func:`simulators.model.draws`, normals by table), the daily cycles by
table, the payload from a per-kind :class:`~ingest.codecs.cat1_json.JsonTemplate`
(byte-identical to the codec's ``encode``); the records are built lazily.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from citysense.records import Reading, RecordBatch
from ingest.codecs.cat1_json import JsonTemplate
from ingest.profiles import Profile
from ingest.topics import uplink_topic
from simulators.model import (
    DAY_S,
    EXPONENTIAL,
    LOCAL_OFFSET_S,
    NORMAL,
    NS,
    PHASE,
    TRAFFIC,
    UNIT,
    DeviceStream,
    Uplink,
    draws,
)

_LINEAR, _UNIFORM, _SHOWER = 0, 1, 2
_SHOWER_P = round(0.05 * 65536)  # P(rain in a minute) for weather stations


@dataclass(frozen=True, slots=True)
class BridgeEvent:
    kind: str  # crack_growth | abnormal_deflection | vibration
    start_ns: int
    end_ns: int
    magnitude: float  # mm of crack growth / mm of extra deflection / x acceleration


_Plan = tuple[tuple[str, ...], Callable[[int, int, list[float]], bytes],
              tuple[tuple[int, float, float, float, float, float], ...], tuple[tuple[float, float], ...],
              tuple[tuple[float, float, float, float, float], ...] | None]
_PLANS: dict[int, tuple[Profile, _Plan]] = {}


def _plan(profile: Profile) -> _Plan:
    """(metric names, payload packer, generic params, bounds, linear params if every metric
    is linear) of a kind, built once and shared by its devices."""
    hit = _PLANS.get(id(profile))  # the entry keeps the profile alive, so its id stays unique
    if hit is not None:
        return hit[1]
    names = tuple(m.name for m in profile.metrics)
    if profile.kind == "bridge" and names != BRIDGE_METRICS:
        raise ValueError(f"bridge profile metrics {names} differ from {BRIDGE_METRICS}")
    params = tuple(generic_params(profile))
    linear = tuple((a, b, s, lo, hi) for _, a, b, s, lo, hi in params)
    plan = (names, JsonTemplate(names).pack, params, tuple((m.low, m.high) for m in profile.metrics),
            linear if all(p[0] == _LINEAR for p in params) else None)
    _PLANS[id(profile)] = (profile, plan)
    return plan


def generic_params(profile: Profile) -> list[tuple[int, float, float, float, float, float]]:
    """Per metric (mode, a, b, s, low, high): linear metrics are ``a + b*phase + s*N(0,1)``.

    Temperatures follow the day by +-6 degC, humidity against it by 15 %RH,
    other metrics by +-20 % of typical with 10 % noise; wind direction is
    uniform; rain is a 5 % chance of an Exp(mean 2 mm) shower.
    """
    out = []
    for m in profile.metrics:
        if m.name == "wind_dir_deg":
            out.append((_UNIFORM, 0.0, 0.0, 359.9 * UNIT, m.low, m.high))
        elif m.name == "rain_mm":
            out.append((_SHOWER, 0.0, 0.0, 2.0, m.low, m.high))
        elif m.name in ("temperature", "water_temp"):
            out.append((_LINEAR, m.typical, 6.0, 0.5, m.low, m.high))
        elif m.name == "humidity":
            out.append((_LINEAR, m.typical, -15.0, 2.0, m.low, m.high))
        else:
            out.append((_LINEAR, m.typical, 0.2 * m.typical, 0.1 * abs(m.typical), m.low, m.high))
    return out


def generic_values(params: Sequence[tuple[int, float, float, float, float, float]], phase: float,
                   d: Sequence[int]) -> list[float]:
    """One sample, clamped and rounded to 0.01, from two 16-bit draws per metric."""
    floor, normal = math.floor, NORMAL
    out = []
    i = 0
    for mode, a, b, s, lo, hi in params:
        if mode == _LINEAR:
            x = a + b * phase + s * normal[d[i]]
        elif mode == _UNIFORM:
            x = s * d[i]
        else:
            x = s * EXPONENTIAL[d[i + 1]] if d[i] < _SHOWER_P else 0.0
        i += 2
        out.append(floor((lo if x < lo else hi if x > hi else x) * 100 + 0.5) / 100)
    return out


BRIDGE_METRICS = ("crack_width_mm", "deflection_mm", "strain_ue", "accel_rms", "accel_peak",
                  "tilt_deg", "temperature", "wind_speed")
BRIDGE_DRAWS = 10


def bridge_values(t: int, d: Sequence[int], events: Sequence[BridgeEvent]) -> dict[str, float]:
    """One 60 s aggregate of a bridge at ``t`` from ``BRIDGE_DRAWS`` 16-bit draws (unclamped)."""
    normal = NORMAL
    local = (t // NS + LOCAL_OFFSET_S) % DAY_S
    phase, traffic = PHASE[local], TRAFFIC[local]
    temp = 17 + 8 * phase + 0.3 * normal[d[0]]
    load = traffic * (0.6 + 0.6 * UNIT * d[1])
    truck = d[2] * UNIT < 0.1 * load
    crack = 0.15 + 0.004 * (17 - temp) + 0.003 * normal[d[3]]
    deflection = 6 * load + (9 if truck else 0) + 0.12 * (temp - 17) + 0.3 * normal[d[4]]
    strain = 90 * load + (60 if truck else 0) + 3.5 * (temp - 17) + 3 * normal[d[5]]
    rms = 0.005 + 0.04 * load + (0.03 if truck else 0) + abs(0.003 * normal[d[6]])
    peak_factor = 3.0 + 1.5 * UNIT * d[7]
    tilt = 0.01 + 0.0005 * (temp - 17) + 0.001 * normal[d[8]]
    wind = abs(2 + 1.5 * phase + normal[d[9]])
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


def cat1_batch(device_id: str, metrics: tuple[str, ...], t: int, values: Sequence[float],
               seq: int) -> RecordBatch:
    """The records a Cat1 uplink carries (an uplink's lazy ``batch``)."""
    readings = tuple(Reading(device_id, m, t, v, 0, seq) for m, v in zip(metrics, values, strict=True))
    return RecordBatch(device_id=device_id, received_ns=0, readings=readings)


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
        topic = uplink_topic(profile.kind, device_id)
        # shared by every device of the kind (hot in cache across 100,000 devices)
        names, pack, params, bounds, linear = _plan(profile)
        t, seq, interval = self.start_ns, 0, self.interval_ns
        out: list[Uplink] = []  # yielded from, so a sleeping device holds no uplink
        if profile.kind == "bridge":
            floor, events = math.floor, self.events
            while True:
                raw = bridge_values(t, draws(rng, BRIDGE_DRAWS), events).values()
                values = [floor((lo if x < lo else hi if x > hi else x) * 100 + 0.5) / 100
                          for x, (lo, hi) in zip(raw, bounds, strict=True)]
                out.append(Uplink(device_id, topic, pack(seq, t // 1_000_000, values), None, t,
                                  recipe=partial(cat1_batch, device_id, names, t, values, seq)))
                del raw, values  # nothing young kept while asleep (see nbiot.NbiotDevice._life)
                yield out.pop()
                seq = (seq + 1) & 0xFFFFFFFF
                t += interval
        if linear is not None:  # air, water: one normal draw per metric
            floor, normal, phase_of = math.floor, NORMAL, PHASE
            n = len(linear)
            while True:
                ph = phase_of[(t // NS + LOCAL_OFFSET_S) % DAY_S]
                values = [floor((lo if (x := a + b * ph + s * normal[di]) < lo else hi if x > hi else x)
                                * 100 + 0.5) / 100
                          for (a, b, s, lo, hi), di in zip(linear, draws(rng, n), strict=True)]
                out.append(Uplink(device_id, topic, pack(seq, t // 1_000_000, values), None, t,
                                  recipe=partial(cat1_batch, device_id, names, t, values, seq)))
                del values  # nothing young kept while asleep (see nbiot.NbiotDevice._life)
                yield out.pop()
                seq = (seq + 1) & 0xFFFFFFFF
                t += interval
        n = 2 * len(params)
        while True:
            values = generic_values(params, PHASE[(t // NS + LOCAL_OFFSET_S) % DAY_S], draws(rng, n))
            out.append(Uplink(device_id, topic, pack(seq, t // 1_000_000, values), None, t,
                              recipe=partial(cat1_batch, device_id, names, t, values, seq)))
            del values
            yield out.pop()
            seq = (seq + 1) & 0xFFFFFFFF
            t += interval
