"""The NB-IoT frame decoder's fast path: frames whose layout was seen before.

Devices of one kind send frames of few shapes: the same sample count, the
same TLVs in the same order, the same value sizes, the same health mask.
Walking such a frame byte by byte in Python costs more than the rest of the
normaliser together, so the first valid frame of a shape teaches a
:class:`Layout` (one ``struct`` for the whole frame, CRC included), and later
frames of that shape are decoded by one ``unpack_from``, a comparison of
their structure bytes (version, flags, counts, tags, sizes, health mask)
with the layout's, and a CRC check.

The fast path only ever *accepts*: a frame it is not sure of (no layout of
its length, other structure bytes, a bad CRC, a zero base time, sample
times not strictly increasing) goes to the general decoder, which gives the
same records or the same reason code it always gave. Layouts are learned
only from frames the general decoder accepted, so every layout has known
tags of valid sizes and no metric twice in a sample.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from citysense.records import Health, Reading, RecordBatch

_NS = 1_000_000_000
_CHAR = {1: "b", 2: "h", 4: "i"}
_HEALTH_FIELDS = ((1, "h"), (2, "h"), (4, "B"), (8, "H"))  # mask bit, struct char (see nbiot_frame)
_MAX_LAYOUTS = 4096  # shapes remembered; a device fleet has a handful per kind


def _getter(indices: list[int]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """``itemgetter`` that returns a tuple for one index too."""
    if len(indices) == 1:
        only = indices[0]
        return lambda t: (t[only],)
    return itemgetter(*indices)


class Layout:
    """One frame shape: its struct, where its structure, times and values are in the unpacked
    tuple, and the metric and divisor of each TLV."""

    __slots__ = ("dts", "expected", "health", "readings", "structure", "unpack_from", "values")

    def __init__(self, frame: bytes, tags: Mapping[int, tuple[str, int]]) -> None:
        """Learn the shape of ``frame``, a frame the general decoder accepted (raw, not hex)."""
        body = frame[:-2]
        fmt = [">BBIIB"]
        structure = [0, 1, 4]  # version, flags, n_samples; seq is 2, base_time 3
        dts: list[int] = []
        readings: list[tuple[str, float, int]] = []  # (metric, divisor, sample number)
        value_at: list[int] = []
        field = 5
        pos = 11
        for k in range(body[10]):
            fmt.append("HB")
            dts.append(field)
            structure.append(field + 1)
            n_tlv = body[pos + 2]
            field, pos = field + 2, pos + 3
            for _ in range(n_tlv):
                tag, size = body[pos], body[pos + 1]
                fmt.append("BB" + _CHAR[size])
                structure += (field, field + 1)
                value_at.append(field + 2)
                metric, decimals = tags[tag]
                readings.append((metric, float(10**decimals), k))
                field, pos = field + 3, pos + 2 + size
        health: tuple[int, list[int | None]] | None = None
        if body[1] & 1:
            mask = body[pos + 2]
            fmt.append("HB")
            structure.append(field + 1)
            h_dt, field = field, field + 2
            slots: list[int | None] = []
            for bit, char in _HEALTH_FIELDS:
                if mask & bit:
                    fmt.append(char)
                    slots.append(field)
                    field += 1
                else:
                    slots.append(None)
            health = (h_dt, slots)
        fmt.append("H")  # the CRC
        self.unpack_from = struct.Struct("".join(fmt)).unpack_from
        if struct.calcsize("".join(fmt)) != len(frame):
            raise ValueError("frame does not match the layout learned from it")
        self.structure = _getter(structure)
        self.expected = self.structure(self.unpack_from(frame))
        self.dts = _getter(dts)
        self.values = _getter(value_at)
        self.readings = tuple(readings)
        self.health = health

    def decode(self, device_id: str, frame: bytes, received_ns: int) -> RecordBatch | None:
        t = self.unpack_from(frame)
        if self.structure(t) != self.expected or t[-1] != binascii.crc_hqx(frame[:-2], 0xFFFF):
            return None
        base = t[3]
        dts = self.dts(t)
        if base == 0 or (len(dts) > 1 and dts != tuple(sorted(set(dts)))):  # strictly increasing
            return None  # the general decoder says why (or accepts equal times of other metrics)
        seq = t[2]
        times = [(base + dt) * _NS for dt in dts]
        readings = tuple([Reading(device_id, metric, times[k], raw / divisor, received_ns, seq)
                          for (metric, divisor, k), raw in zip(self.readings, self.values(t), strict=True)])
        health: tuple[Health, ...] = ()
        if self.health is not None:
            h_dt, (rsrp, sinr, ce, mv) = self.health
            health = (Health(
                device_id, (base + t[h_dt]) * _NS,
                None if rsrp is None else t[rsrp] / 10, None if sinr is None else t[sinr] / 10,
                None if ce is None else t[ce], None if mv is None else t[mv] / 1000,
            ),)
        return RecordBatch(device_id, received_ns, readings, (), health)


class Layouts:
    """Layouts by (frame length, flags, sample count): the few shapes of each length."""

    __slots__ = ("_by_key", "_tags")

    def __init__(self, tags: Mapping[int, tuple[str, int]]) -> None:
        self._tags = tags
        self._by_key: dict[tuple[int, int, int], list[Layout]] = {}

    def decode(self, device_id: str, frame: bytes, received_ns: int) -> RecordBatch | None:
        """The frame's records if a known layout fits it exactly; None: ask the general decoder."""
        if len(frame) < 13:
            return None
        known = self._by_key.get((len(frame), frame[1], frame[10]))
        if known is None:
            return None
        for i, layout in enumerate(known):
            batch = layout.decode(device_id, frame, received_ns)
            if batch is not None:
                if i:  # the shape last seen is tried first next time
                    known.insert(0, known.pop(i))
                return batch
        return None

    def learn(self, frame: bytes) -> None:
        """Remember the layout of ``frame``, which the general decoder accepted."""
        key = (len(frame), frame[1], frame[10])
        known = self._by_key.get(key)
        if known is None:
            if len(self._by_key) >= _MAX_LAYOUTS:
                self._by_key.clear()
            known = self._by_key[key] = []
        layout = Layout(frame, self._tags)
        if all(k.expected != layout.expected for k in known) and len(known) < 16:
            known.append(layout)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_key.values())
