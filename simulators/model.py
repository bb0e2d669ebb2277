"""What every simulated device shares: the uplink it produces and a time-ordered stream.

A device model is a generator of :class:`Uplink` in device-time order with
one uplink of look-ahead, so a scheduler can ask when the next one is due
(``next_ns``) before taking it (``take``). Models draw from an injected
``random.Random``: a per-device one for small runs, one shared per run for
100,000 devices (a Mersenne Twister state is 2.5 KB; 100,000 would be 250 MB).
Either way the output is a function of the seed, because the order in which
devices are asked is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from citysense.records import RecordBatch

DAY_S = 86_400
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Uplink:
    """One MQTT PUBLISH a device makes: where, what bytes, and the records they encode.

    ``time_ns`` is the device time of the uplink (its wake-up or send time);
    ``fault`` names an injected fault (``""`` for a clean uplink); ``reconnect``
    asks the transport to drop and re-open the device's connection first.
    """

    device_id: str
    topic: str
    payload: bytes
    batch: RecordBatch
    time_ns: int = 0
    fault: str = ""
    reconnect: bool = False


class DeviceStream:
    """A device's uplinks with one of look-ahead (subclasses implement ``_life``)."""

    __slots__ = ("_gen", "_pending", "device_id", "kind")

    def __init__(self, device_id: str, kind: str) -> None:
        self.device_id = device_id
        self.kind = kind
        self._gen: Iterator[Uplink] = self._life()
        self._pending = next(self._gen)

    def _life(self) -> Iterator[Uplink]:
        raise NotImplementedError

    @property
    def next_ns(self) -> int:
        return self._pending.time_ns

    def take(self) -> Uplink:
        out, self._pending = self._pending, next(self._gen)
        return out


def day_phase(time_ns: int, peak_hour: float = 15.0) -> float:
    """-1..1 daily cycle peaking at ``peak_hour`` (UTC+8 local time)."""
    local_s = (time_ns // NS + 8 * 3600) % DAY_S
    return math.cos(2 * math.pi * (local_s / 3600 - peak_hour) / 24)


def traffic_load(time_ns: int) -> float:
    """0..1 road traffic: morning and evening peaks, quiet nights (local time)."""
    h = ((time_ns // NS + 8 * 3600) % DAY_S) / 3600
    peaks = math.exp(-((h - 8.0) ** 2) / 2.0) + math.exp(-((h - 18.0) ** 2) / 2.5)
    base = 0.25 if 6 <= h <= 22 else 0.05
    return min(1.0, base + 0.75 * peaks)
