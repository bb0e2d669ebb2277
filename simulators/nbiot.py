"""NB-IoT devices in PSM: sleep, wake, send every buffered sample in one frame.

Each device samples every ``profile.sample_interval_s`` and wakes every
``profile.report_interval_s`` to send the samples taken since the last
wake-up (oldest first) in one binary frame (``ingest.codecs.nbiot_frame``)
with its health at wake-up: RSRP (-44..-140 dBm), SINR, coverage-enhancement
level (CE0 above -105 dBm, CE1 to -120 dBm, CE2 below) and battery voltage.
Battery drains per uplink by the CE level's repetition cost (CE0 x1, CE1 x4,
CE2 x16), so deep-coverage devices die first. Registers (meters, rain total)
only grow. Late delivery after an outage is the ``reconnect_burst`` fault
(``simulators.faults``): frames held during the outage arrive together.

Fast path: values are computed directly as the frame's raw integers
(value x 10**decimals), one batch of random draws per wake-up
(:func:`simulators.model.draws`), and packed by a per-kind
:class:`~ingest.codecs.nbiot_frame.FrameLayout` whose output is byte-identical
to the codec's ``encode`` of the uplink's (lazily built) records.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial

from citysense.records import Health, Reading, RecordBatch
from ingest.codecs.nbiot_frame import FrameLayout
from ingest.profiles import Profile
from ingest.topics import uplink_topic
from simulators.model import (
    DAY_S,
    EXPONENTIAL,
    LOCAL_OFFSET_S,
    NORMAL,
    NS,
    PHASE,
    UNIT,
    DeviceStream,
    Uplink,
    draws,
)

CE_COST = (1.0, 4.0, 16.0)
BATTERY_FULL_V = 3.65
BATTERY_EMPTY_V = 3.0
DRAIN_V_PER_UPLINK = 0.00004  # at CE0: ~16,000 uplinks from full to empty
RAIN_MEAN_MM = 2.5  # mean rain per 5-minute sample while it rains (exponential)
# A 16-bit draw -> rain in a 5-minute sample while raining, in 0.1 mm (the frame's unit).
_RAIN_TENTHS = tuple(math.floor(e * RAIN_MEAN_MM * 10 + 0.5) for e in EXPONENTIAL)
_KEEP_RAINING = round(0.9 * 65536)  # P(rain | rained in the previous sample) = 0.9
_START_RAINING = round(0.03 * 65536)  # P(rain | dry before) = 0.03
_DRAIN_UV = tuple(round(DRAIN_V_PER_UPLINK * c * 1_000_000) for c in CE_COST)
_EMPTY_UV = round(BATTERY_EMPTY_V * 1_000_000)
_LAYOUTS: dict[tuple[str, tuple[str, ...], int, int], FrameLayout] = {}


def ce_level(rsrp_dbm: float) -> int:
    return 0 if rsrp_dbm >= -105 else 1 if rsrp_dbm >= -120 else 2


def frame_layout(profile: Profile, samples: int, sample_s: int) -> FrameLayout:
    """The shared frame layout of a kind: ``samples`` samples ``sample_s`` apart, health at the last."""
    names = tuple(m.name for m in profile.metrics)
    key = (profile.codec, names, samples, sample_s)
    layout = _LAYOUTS.get(key)
    if layout is None:
        layout = _LAYOUTS[key] = FrameLayout(
            names, [k * sample_s for k in range(samples)], (samples - 1) * sample_s,
            hex_text=profile.codec == "nbiot-frame-hex")
    return layout


def frame_batch(
    device_id: str, layout: FrameLayout, base_s: int, seq: int, raws: Sequence[int],
    health: tuple[int, int, int, int],
) -> RecordBatch:
    """The records a frame of ``raws`` decodes to (an uplink's lazy ``batch``)."""
    metrics, scales, nm = layout.metrics, layout.scales, layout.n_metrics
    readings = tuple(
        Reading(device_id, metrics[j], (base_s + dt) * NS, raws[k * nm + j] / scales[j], 0, seq)
        for k, dt in enumerate(layout.sample_dts) for j in range(nm)
    )
    rsrp, sinr, ce, mv = health
    wake_ns = (base_s + layout.sample_dts[-1]) * NS
    return RecordBatch(device_id, 0, readings, (),
                       (Health(device_id, wake_ns, rsrp / 10, sinr / 10, ce, mv / 1000),))


_METER_RATES = (0.02 * 1000 * UNIT, 0.03 * 1000 * UNIT, 0.002 * 1000 * UNIT, 0.6 * 100 * UNIT)
_Params = tuple[tuple[float, float, float, float, float, int], ...]


class _Plan:
    """What the NB-IoT devices of one kind and timing share (built once, hot in cache)."""

    __slots__ = ("interval_s", "layout", "n_draws", "offsets", "pack", "params", "profile", "span_s")

    def __init__(self, profile: Profile, samples: int, sample_s: int, interval_s: int) -> None:
        self.profile = profile  # keeps id(profile), part of the cache key, unique
        self.layout = layout = frame_layout(profile, samples, sample_s)
        self.pack = layout.pack
        nm = layout.n_metrics
        self.span_s, self.interval_s = (samples - 1) * sample_s, interval_s
        # local second of the day of each sample, relative to base_time
        self.offsets = tuple(LOCAL_OFFSET_S + k * sample_s for k in range(samples))
        per_sample = {"rain": 2, "meter": 4}.get(profile.kind, nm)
        self.n_draws = per_sample * samples + 2  # + RSRP and SINR
        # generic metrics: typical x (1 + 0.25 day cycle) + N(0, 12 % of typical), clamped,
        # in frame units, +0.5 folded in so that floor() rounds; one tuple per value of a frame,
        # sample-major, with its sample's index k
        per_metric = [(m.typical * s + 0.5, m.typical * s * 0.25, m.typical * s * 0.12,
                       m.low * s + 0.5, m.high * s + 0.5)
                      for m, s in zip(profile.metrics, layout.scales, strict=True)]
        self.params: _Params = tuple((*p, k) for k in range(samples) for p in per_metric)


_PLANS: dict[tuple[int, int, int, int], _Plan] = {}


def _plan(profile: Profile, samples: int, sample_s: int, interval_s: int) -> _Plan:
    key = (id(profile), samples, sample_s, interval_s)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _Plan(profile, samples, sample_s, interval_s)
    return plan


class NbiotDevice(DeviceStream):
    __slots__ = ("battery_uv", "interval_ns", "profile", "rng", "rsrp_mean", "sample_ns", "start_ns")

    def __init__(
        self, device_id: str, profile: Profile, rng: random.Random, *, start_ns: int,
        interval_ns: int | None = None,
    ) -> None:
        self.profile = profile
        self.rng = rng
        self.start_ns = start_ns - start_ns % NS
        self.interval_ns = interval_ns or int(profile.report_interval_s * NS)
        self.sample_ns = int((profile.sample_interval_s or profile.report_interval_s) * NS)
        if self.interval_ns % NS or self.sample_ns % NS:
            raise ValueError("NB-IoT report and sample intervals are whole seconds")
        self.rsrp_mean = min(-50.0, max(-135.0, rng.gauss(-95, 13)))
        self.battery_uv = round(round(rng.uniform(3.45, BATTERY_FULL_V), 3) * 1_000_000)
        super().__init__(device_id, profile.kind)

    @property
    def battery_v(self) -> float:
        return self.battery_uv / 1e6

    def _health(self, d_rsrp: int, d_sinr: int) -> tuple[int, int, int, int]:
        """(RSRP 0.1 dBm, SINR 0.1 dB, CE level, battery mV) at a wake-up, from two draws."""
        rsrp = math.floor(self.rsrp_mean * 10 + 25.0 * NORMAL[d_rsrp] + 0.5)
        rsrp = -440 if rsrp > -440 else -1400 if rsrp < -1400 else rsrp
        ce = 0 if rsrp >= -1050 else 1 if rsrp >= -1200 else 2
        sinr = math.floor(((rsrp / 10 + 125) / 2.2 + 1.5 * NORMAL[d_sinr]) * 10 + 0.5)
        sinr = 300 if sinr > 300 else -100 if sinr < -100 else sinr
        uv = self.battery_uv - _DRAIN_UV[ce]
        self.battery_uv = uv = _EMPTY_UV if uv < _EMPTY_UV else uv
        return rsrp, sinr, ce, (uv + 500) // 1000

    def _life(self) -> Iterator[Uplink]:
        """The device's uplinks, forever.

        A suspended generator keeps its locals, and 100,000 of them asleep at
        once would keep 100,000s of fresh lists and tuples alive in the cyclic
        GC's youngest generation, making each of its collections ~0.1 s; so
        the per-uplink containers are dropped before ``yield``, and the uplink
        itself is yielded out of a one-slot list rather than from a local (it
        holds what it needs).
        """
        rng, device_id = self.rng, self.device_id
        topic = uplink_topic(self.profile.kind, device_id)
        samples = max(1, min(255, self.interval_ns // self.sample_ns))
        # Everything but the device's own state is shared by the devices of a kind, so
        # it stays in cache while the load generator visits 100,000 devices in turn.
        plan = _plan(self.profile, samples, self.sample_ns // NS, self.interval_ns // NS)
        layout, pack = plan.layout, plan.pack
        span_s, interval_s, n = plan.span_s, plan.interval_s, plan.n_draws
        values = _VALUES.get(self.profile.kind, _generic_values)(plan, rng)
        out: list[Uplink] = []
        seq = 0
        base_s = self.start_ns // NS - span_s
        while True:
            d = draws(rng, n)
            raws = values(d, base_s)
            health = self._health(d[-2], d[-1])
            out.append(Uplink(device_id, topic, pack(seq, base_s, raws, health), None,
                              (base_s + span_s) * NS, recipe=partial(
                                  frame_batch, device_id, layout, base_s, seq, raws, health)))
            del d, raws, health  # see the docstring: nothing young kept while asleep
            yield out.pop()
            seq = (seq + 1) & 0xFFFFFFFF
            base_s += interval_s


# A wake-up's frame values (raw integers, sample-major) from its random draws (the last two
# are the health's) and the frame's base time. One function per kind, made per device: the
# registers it keeps (rain total, meters) live in its closure.
_Values = Callable[[tuple[int, ...], int], list[int]]


def _generic_values(plan: _Plan, rng: random.Random) -> _Values:
    """Typical value x (1 + 0.25 day cycle) + normal noise, clamped (``_Plan.params``)."""
    offsets, params, floor, normal, phase_of = plan.offsets, plan.params, math.floor, NORMAL, PHASE

    def values(d: tuple[int, ...], base_s: int) -> list[int]:
        ph = [phase_of[(base_s + off) % DAY_S] for off in offsets]
        return [floor(lo if (x := a + b * ph[k] + s * normal[di]) < lo else hi if x > hi else x)
                for (a, b, s, lo, hi, k), di in zip(params, d, strict=False)]  # d: +2 health
    return values


def _rain_values(plan: _Plan, rng: random.Random) -> _Values:
    """Per sample: whether it rains (it tends to go on), the rain, and the growing total."""
    total = math.floor(rng.uniform(0, 5000) * 10 + 0.5)  # register, 0.1 mm
    raining = False

    def values(d: tuple[int, ...], base_s: int) -> list[int]:
        nonlocal total, raining
        raws: list[int] = []
        for k in range(0, len(d) - 2, 2):
            raining = d[k] < (_KEEP_RAINING if raining else _START_RAINING)
            rain = _RAIN_TENTHS[d[k + 1]] if raining else 0
            total += rain
            raws += (rain, total)
        return raws
    return values


def _meter_values(plan: _Plan, rng: random.Random) -> _Values:
    """Four registers that only grow, faster by day."""
    # registers in the frame's units (as floats, so small increments accumulate)
    water, gas = rng.uniform(0, 2000) * 1000, rng.uniform(0, 3000) * 1000
    heat, power = rng.uniform(0, 400) * 1000, rng.uniform(0, 30000) * 100
    cw, cg, ch, cp = _METER_RATES
    offsets, phase_of = plan.offsets, PHASE

    def values(d: tuple[int, ...], base_s: int) -> list[int]:
        nonlocal water, gas, heat, power
        raws: list[int] = []
        i = 0
        for off in offsets:
            use = 1.0 + 0.8 * phase_of[(base_s + off) % DAY_S]
            water += cw * use * d[i]
            gas += cg * use * d[i + 1]
            heat += ch * use * d[i + 2]
            power += cp * use * d[i + 3]
            i += 4
            raws += (int(water + 0.5), int(gas + 0.5), int(heat + 0.5), int(power + 0.5))
        return raws
    return values


_VALUES: dict[str, Callable[[_Plan, random.Random], _Values]] = {
    "rain": _rain_values, "meter": _meter_values}
