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
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from citysense.records import Health, Reading, RecordBatch
from ingest.codecs import codec_named
from ingest.profiles import Profile
from ingest.topics import uplink_topic
from simulators.model import NS, DeviceStream, Uplink, day_phase

CE_COST = (1.0, 4.0, 16.0)
BATTERY_FULL_V = 3.65
BATTERY_EMPTY_V = 3.0
DRAIN_V_PER_UPLINK = 0.00004  # at CE0: ~16,000 uplinks from full to empty


def ce_level(rsrp_dbm: float) -> int:
    return 0 if rsrp_dbm >= -105 else 1 if rsrp_dbm >= -120 else 2


class NbiotDevice(DeviceStream):
    __slots__ = ("battery_v", "interval_ns", "profile", "rng", "rsrp_mean", "sample_ns", "start_ns")

    def __init__(
        self, device_id: str, profile: Profile, rng: random.Random, *, start_ns: int,
        interval_ns: int | None = None,
    ) -> None:
        self.profile = profile
        self.rng = rng
        self.start_ns = start_ns - start_ns % NS
        self.interval_ns = interval_ns or int(profile.report_interval_s * NS)
        self.sample_ns = int((profile.sample_interval_s or profile.report_interval_s) * NS)
        self.rsrp_mean = min(-50.0, max(-135.0, rng.gauss(-95, 13)))
        self.battery_v = round(rng.uniform(3.45, BATTERY_FULL_V), 3)
        super().__init__(device_id, profile.kind)

    def _health(self, t: int) -> Health:
        rng = self.rng
        rsrp = round(min(-44.0, max(-140.0, self.rsrp_mean + rng.gauss(0, 2.5))), 1)
        ce = ce_level(rsrp)
        sinr = round(min(30.0, max(-10.0, (rsrp + 125) / 2.2 + rng.gauss(0, 1.5))), 1)
        self.battery_v = max(BATTERY_EMPTY_V, self.battery_v - DRAIN_V_PER_UPLINK * CE_COST[ce])
        return Health(self.device_id, t, rsrp, sinr, ce, round(self.battery_v, 3))

    def _life(self) -> Iterator[Uplink]:
        profile, rng, device_id = self.profile, self.rng, self.device_id
        codec = codec_named(profile.codec)
        topic = uplink_topic(profile.kind, device_id)
        samples = max(1, min(255, self.interval_ns // self.sample_ns))
        registers = {
            "water_m3": rng.uniform(0, 2000), "gas_m3": rng.uniform(0, 3000),
            "heat_gj": rng.uniform(0, 400), "power_kwh": rng.uniform(0, 30000),
            "rain_total_mm": rng.uniform(0, 5000),
        }
        raining = False
        t_wake, seq = self.start_ns, 0
        while True:
            readings: list[Reading] = []
            for k in range(samples):
                t = t_wake - (samples - 1 - k) * self.sample_ns
                phase = day_phase(t)
                if profile.kind == "rain":
                    raining = rng.random() < (0.9 if raining else 0.03)
                    rain = round(rng.expovariate(0.4), 1) if raining else 0.0
                    registers["rain_total_mm"] += rain
                    values = {"rain_mm": rain, "rain_total_mm": registers["rain_total_mm"]}
                elif profile.kind == "meter":
                    use = 1.0 + 0.8 * phase
                    registers["water_m3"] += 0.02 * use * rng.random()
                    registers["gas_m3"] += 0.03 * use * rng.random()
                    registers["heat_gj"] += 0.002 * use * rng.random()
                    registers["power_kwh"] += 0.6 * use * rng.random()
                    values = {m: registers[m] for m in ("water_m3", "gas_m3", "heat_gj", "power_kwh")}
                else:
                    values = {}
                    for m in profile.metrics:
                        v = m.typical * (1 + 0.25 * phase) + rng.gauss(0, m.typical * 0.12)
                        values[m.name] = min(m.high, max(m.low, v))
                for m in profile.metrics:
                    readings.append(Reading(device_id, m.name, t, _rounded(m.name, values[m.name]), 0, seq))
            batch = RecordBatch(device_id, 0, tuple(readings), (), (self._health(t_wake),))
            yield Uplink(device_id, topic, codec.encode(batch), batch, t_wake)
            seq = (seq + 1) & 0xFFFFFFFF
            t_wake += self.interval_ns


_SCALE = (1, 10, 100, 1000)
_DECIMALS = {"water_m3": 3, "gas_m3": 3, "heat_gj": 3, "power_kwh": 2}


def _rounded(metric: str, value: float) -> float:
    """Round to the frame's resolution so a decoded reading equals the generated one."""
    scale = _SCALE[_DECIMALS.get(metric, 1)]
    return math.floor(value * scale + 0.5) / scale
