"""What every simulated device shares: the uplink it produces and a time-ordered stream.

A device model is a generator of :class:`Uplink` in device-time order with
one uplink of look-ahead, so a scheduler can ask when the next one is due
(``next_ns``) before taking it (``take``). Models draw from an injected
``random.Random``: a per-device one for small runs, one shared per run for
100,000 devices (a Mersenne Twister state is 2.5 KB; 100,000 would be 250 MB).
Either way the output is a function of the seed, because the order in which
devices are asked is.

The load path is hot (50,000 uplinks/s from one process), so models draw
their randomness in one batch per device tick (:func:`draws`: one
``randbytes`` call, one ``struct`` unpack) and turn the 16-bit draws into
normal or uniform variates by table lookup (:data:`NORMAL`), read the daily
cycles from per-second tables, write the payload bytes directly, and build
an uplink's canonical records only when someone asks for them
(``Uplink.batch`` is lazy: the load generator never does).
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable, Iterator
from random import Random
from statistics import NormalDist
from typing import Any

from citysense.records import RecordBatch

DAY_S = 86_400
NS = 1_000_000_000
_LOCAL_OFFSET_S = 8 * 3600  # Sichuan local time, UTC+8


class Uplink:
    """One MQTT PUBLISH a device makes: where, what bytes, and the records they encode.

    ``time_ns`` is the device time of the uplink (its wake-up or send time);
    ``fault`` names an injected fault (``""`` for a clean uplink); ``reconnect``
    asks the transport to drop and re-open the device's connection first.
    ``batch`` is either given or built on first access from ``recipe`` (a
    function of values captured when the payload was made), so the load path
    does not pay for records it never reads. Treat an uplink as immutable:
    derive changed copies with :meth:`replace`.
    """

    __slots__ = ("_batch", "_recipe", "device_id", "fault", "payload", "reconnect", "time_ns", "topic")

    def __init__(
        self, device_id: str, topic: str, payload: bytes, batch: RecordBatch | None = None,
        time_ns: int = 0, fault: str = "", reconnect: bool = False,
        recipe: Callable[[], RecordBatch] | None = None,
    ) -> None:
        if batch is None and recipe is None:
            raise ValueError("an uplink needs its batch or a recipe for it")
        self.device_id = device_id
        self.topic = topic
        self.payload = payload
        self._batch = batch
        self._recipe = recipe
        self.time_ns = time_ns
        self.fault = fault
        self.reconnect = reconnect

    @property
    def batch(self) -> RecordBatch:
        b = self._batch
        if b is None:
            assert self._recipe is not None
            b = self._batch = self._recipe()
            self._recipe = None
        return b

    def replace(self, **changes: Any) -> Uplink:
        """A copy with some fields changed (``batch=`` replaces the records too)."""
        fields: dict[str, Any] = {
            "device_id": self.device_id, "topic": self.topic, "payload": self.payload,
            "time_ns": self.time_ns, "fault": self.fault, "reconnect": self.reconnect,
        }
        if "batch" not in changes:
            if self._batch is not None:
                fields["batch"] = self._batch
            else:
                fields["recipe"] = self._recipe
        fields.update(changes)
        return Uplink(**fields)

    def _key(self) -> tuple[str, str, bytes, RecordBatch, int, str, bool]:
        return (self.device_id, self.topic, self.payload, self.batch, self.time_ns, self.fault,
                self.reconnect)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Uplink) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Uplink(device_id={self.device_id!r}, topic={self.topic!r}, "
                f"payload={self.payload!r}, time_ns={self.time_ns}, fault={self.fault!r}, "
                f"reconnect={self.reconnect})")


class DeviceStream:
    """A device's uplinks in device-time order (subclasses implement ``_life``).

    ``take`` generates the next uplink on demand; ``next_ns`` (for a
    time-ordered merge) generates it ahead and keeps it until taken. A
    round-robin load run never asks, so it holds no uplink per device: with
    100,000 devices a look-ahead of one each is ~100 MB of cold objects.
    """

    __slots__ = ("_gen", "_pending", "device_id", "kind")

    def __init__(self, device_id: str, kind: str) -> None:
        self.device_id = device_id
        self.kind = kind
        self._gen: Iterator[Uplink] = self._life()
        self._pending: Uplink | None = None

    def _life(self) -> Iterator[Uplink]:
        raise NotImplementedError

    @property
    def next_ns(self) -> int:
        if self._pending is None:
            self._pending = next(self._gen)
        return self._pending.time_ns

    def take(self) -> Uplink:
        out = self._pending
        if out is None:
            return next(self._gen)
        self._pending = None
        return out


def day_phase(time_ns: int, peak_hour: float = 15.0) -> float:
    """-1..1 daily cycle peaking at ``peak_hour`` (UTC+8 local time)."""
    local_s = (time_ns // NS + _LOCAL_OFFSET_S) % DAY_S
    return math.cos(2 * math.pi * (local_s / 3600 - peak_hour) / 24)


def traffic_load(time_ns: int) -> float:
    """0..1 road traffic: morning and evening peaks, quiet nights (local time)."""
    h = ((time_ns // NS + _LOCAL_OFFSET_S) % DAY_S) / 3600
    peaks = math.exp(-((h - 8.0) ** 2) / 2.0) + math.exp(-((h - 18.0) ** 2) / 2.5)
    base = 0.25 if 6 <= h <= 22 else 0.05
    return min(1.0, base + 0.75 * peaks)


# Per-second tables of the daily cycles, indexed by local second of the day
# (``(epoch_s + LOCAL_OFFSET_S) % DAY_S``): the same floats the functions above
# return for whole seconds, for a list lookup instead of cos/exp per sample.
LOCAL_OFFSET_S = _LOCAL_OFFSET_S
PHASE: list[float] = [day_phase((s - _LOCAL_OFFSET_S) * NS) for s in range(DAY_S)]
TRAFFIC: list[float] = [traffic_load((s - _LOCAL_OFFSET_S) * NS) for s in range(DAY_S)]

# Standard normal variates by 16-bit draw: the inverse CDF at the midpoints of
# 65,536 equiprobable bins (|z| <= 4.33), i.e. a normal quantised in probability.
NORMAL = array("d", (NormalDist().inv_cdf((i + 0.5) / 65536) for i in range(65536)))
# Exp(1) variates by 16-bit draw, the same way (max 11.8).
EXPONENTIAL = array("d", (-math.log(1 - (i + 0.5) / 65536) for i in range(65536)))
UNIT = 1 / 65536  # a 16-bit draw d as a uniform in [0, 1): d * UNIT

_UNPACK: dict[int, Callable[[bytes], tuple[int, ...]]] = {}


def draws(rng: Random, n: int) -> tuple[int, ...]:
    """``n`` independent uniform 16-bit draws (0..65535) from one ``randbytes`` call."""
    unpack = _UNPACK.get(n)
    if unpack is None:
        unpack = _UNPACK[n] = struct.Struct(f"<{n}H").unpack
    return unpack(rng.getrandbits(16 * n).to_bytes(2 * n, "little"))  # = rng.randbytes(2 * n)
