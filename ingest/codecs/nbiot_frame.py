"""NB-IoT compact binary frame (v1), carried raw or hex-encoded.

NB-IoT devices sleep in PSM and wake every few minutes to hours; one wake-up
uplink carries every sample buffered since the last one, oldest first, plus
the radio/battery health at wake-up. Carrier platforms forward such frames
either as raw bytes or as an ASCII hex string ("transparent" payload);
``decode`` accepts both. All integers are big-endian::

    off  size  field
    0    1     version            = 0x01
    1    1     flags              bit0: health block present; other bits 0
    2    4     seq                u32 device uplink counter (wraps at 2**32)
    6    4     base_time          u32 device clock, epoch seconds (UTC), > 0
    10   1     n_samples          u8, >= 1
    11   ...   n_samples x sample:
                 2  dt            u16 seconds after base_time, non-decreasing
                 1  n_tlv         u8
                 n_tlv x TLV:     tag u8, len u8 (1, 2 or 4), value: signed int
                                  of len bytes = metric value x 10**decimals
    ...  ...   health block (if flags bit0):
                 2  dt            u16 seconds after base_time (wake-up time)
                 1  mask          bit0 rsrp, bit1 sinr, bit2 ce, bit3 battery
                 2  rsrp          i16, 0.1 dBm     (if bit0)
                 2  sinr          i16, 0.1 dB      (if bit1)
                 1  ce_level      u8, 0..2         (if bit2)
                 2  battery       u16, millivolts  (if bit3)
    -2   2     crc                CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)
                                  over every preceding byte

Tags and decimals are in :data:`TAGS`. Every reading of a frame carries the
frame's ``seq``; ``(device, metric, time)`` stays unique because samples of
one frame have distinct times per metric. Decoding checks, in order: size
(``oversize``), version (``unsupported_version``), structure (``truncated``
when the declared lengths run past the end, ``malformed`` for bad lengths or
trailing bytes), CRC (``bad_crc``), then meaning (``unknown_metric``,
``bad_timestamp`` for a zero base time or samples out of time order).
A frame of a shape already accepted once is decoded by ``nbiot_layout``'s
fast path, which accepts exactly what this walk accepts.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable, Sequence
from itertools import pairwise
from operator import itemgetter
from typing import Any

from citysense.records import Health, Reading, RecordBatch
from ingest.codecs.base import (
    BAD_CRC,
    BAD_TIMESTAMP,
    MALFORMED,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS_PER_UPLINK,
    OVERSIZE,
    TRUNCATED,
    UNKNOWN_METRIC,
    UNSUPPORTED_VERSION,
    DecodeError,
)
from ingest.codecs.nbiot_layout import Layouts

VERSION = 1
FLAG_HEALTH = 0x01
_HEADER = struct.Struct(">BBIIB")
_SAMPLE = struct.Struct(">HB")
_U16 = struct.Struct(">H")
_I16 = struct.Struct(">h")
_HEX_DIGITS = b"0123456789abcdefABCDEF"  # bytes.translate deletes them: what is left is not hex
_NS = 1_000_000_000
_SCALE = (1, 10, 100, 1000)

# tag -> (metric, decimals). Metric names match ingest.profiles.
TAGS: dict[int, tuple[str, int]] = {
    0x01: ("pm25", 1),
    0x02: ("pm10", 1),
    0x03: ("o3", 1),
    0x04: ("noise_dba", 1),
    0x05: ("temperature", 1),
    0x06: ("humidity", 1),
    0x10: ("rain_mm", 1),
    0x11: ("rain_total_mm", 1),
    0x20: ("water_m3", 3),
    0x21: ("gas_m3", 3),
    0x22: ("heat_gj", 3),
    0x23: ("power_kwh", 2),
}
METRIC_TAGS: dict[str, tuple[int, int]] = {m: (t, d) for t, (m, d) in TAGS.items()}
_LAYOUTS = Layouts(TAGS)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (binascii.crc_hqx is the same polynomial, in C)."""
    return int(binascii.crc_hqx(data, 0xFFFF))


_TLV1, _TLV2, _TLV4 = struct.Struct(">BBb"), struct.Struct(">BBh"), struct.Struct(">BBi")
_ENCODE = {m: (t, _SCALE[d]) for m, (t, d) in METRIC_TAGS.items()}


def _tlv(metric: str, value: float) -> bytes:
    """Smallest TLV (1, 2 or 4 value bytes) holding ``value``."""
    try:
        tag, scale = _ENCODE[metric]
    except KeyError:
        raise ValueError(f"NB-IoT frame has no tag for metric {metric!r}") from None
    raw = round(value * scale)
    if -128 <= raw < 128:
        return _TLV1.pack(tag, 1, raw)
    if -32768 <= raw < 32768:
        return _TLV2.pack(tag, 2, raw)
    if -(1 << 31) <= raw < 1 << 31:
        return _TLV4.pack(tag, 4, raw)
    raise ValueError(f"{metric}={value} does not fit the frame's 32-bit value")


def _health_block(h: Health, base_s: int) -> bytes:
    dt = h.time_ns // _NS - base_s
    if h.time_ns % _NS or not 0 <= dt <= 0xFFFF:
        raise ValueError("health time must be whole seconds within 18 h of the first sample")
    mask, body = 0, b""
    if h.rsrp_dbm is not None:
        mask |= 1
        body += _I16.pack(round(h.rsrp_dbm * 10))
    if h.sinr_db is not None:
        mask |= 2
        body += _I16.pack(round(h.sinr_db * 10))
    if h.ce_level is not None:
        mask |= 4
        body += bytes((h.ce_level,))
    if h.battery_v is not None:
        mask |= 8
        body += _U16.pack(round(h.battery_v * 1000))
    return _U16.pack(dt) + bytes((mask,)) + body


def encode_frame(readings: Sequence[Reading], health: Health | None, seq: int) -> bytes:
    """A v1 frame of ``readings`` (grouped into samples by time, in time order)."""
    if not readings:
        raise ValueError("an NB-IoT frame carries at least one reading")
    groups: dict[int, list[Reading]] = {}
    for r in readings:
        if r.time_ns % _NS:
            raise ValueError("NB-IoT frame times are whole seconds")
        groups.setdefault(r.time_ns // _NS, []).append(r)
    times = sorted(groups)
    base = times[0]
    if not 0 < base < 1 << 32 or times[-1] - base > 0xFFFF or len(times) > 255:
        raise ValueError("samples must span at most 65535 s, at most 255 samples, base_time > 0")
    flags = FLAG_HEALTH if health else 0
    parts = [_HEADER.pack(VERSION, flags, seq & 0xFFFFFFFF, base, len(times))]
    for t in times:
        group = groups[t]
        parts.append(_SAMPLE.pack(t - base, len(group)))
        parts.extend(_tlv(r.metric, r.value) for r in group)
    if health is not None:
        parts.append(_health_block(health, base))
    body = b"".join(parts)
    return body + _U16.pack(crc16(body))


_CHAR = {1: "b", 2: "h", 4: "i"}


class FrameLayout:
    """A precomputed frame layout for a device kind: the load generator's fast encode path.

    Devices of one kind send the same metrics in every sample, at the same
    offsets (``sample_dts``, seconds after ``base_time``, strictly
    increasing), with the health block at ``health_dt``. :meth:`pack` takes
    the raw integer values (metric value x 10**decimals, sample-major, metrics
    in ``metrics`` order) and returns exactly the bytes :func:`encode_frame`
    returns for readings with the values ``raw / 10**decimals`` (hex text if
    ``hex_text``, like the ``nbiot-frame-hex`` codec): the same smallest TLV
    per value, the same CRC. The struct for each pattern of value sizes is
    compiled once and cached.
    """

    __slots__ = ("_all1", "_all2", "_all4", "_cache", "_health_dt", "_tag_words", "hex_text", "metrics",
                 "n_metrics", "sample_dts", "scales")

    def __init__(self, metrics: Sequence[str], sample_dts: Sequence[int], health_dt: int | None,
                 *, hex_text: bool = False) -> None:
        try:
            tags = [METRIC_TAGS[m] for m in metrics]
        except KeyError as exc:
            raise ValueError(f"NB-IoT frame has no tag for metric {exc.args[0]!r}") from None
        dts = tuple(sample_dts)
        if not metrics or not dts or dts[0] != 0 or len(dts) > 255 or dts[-1] > 0xFFFF \
                or any(b <= a for a, b in pairwise(dts)):
            raise ValueError("samples: 1..255 strictly increasing offsets from 0, at most 65535 s")
        if health_dt is not None and not 0 <= health_dt <= 0xFFFF:
            raise ValueError("health offset must be 0..65535 s")
        self.metrics = tuple(metrics)
        self.n_metrics = len(metrics)
        self.scales = tuple(_SCALE[d] for _, d in tags)
        self.sample_dts = dts
        self.hex_text = hex_text
        self._tag_words = tuple(t << 8 for t, _ in tags)
        self._health_dt = health_dt
        self._cache: dict[bytes, tuple[Callable[..., bytes], list[int], itemgetter[Any]]] = {}
        n = self.n_metrics * len(dts)
        self._all1, self._all2, self._all4 = bytes([1] * n), bytes([2] * n), bytes([4] * n)

    def _compile(self, sizes: bytes) -> tuple[Callable[..., bytes], list[int], itemgetter[Any]]:
        """For one pattern of value sizes: the struct's pack, its constant arguments, and
        the ``itemgetter`` that orders ``constants + raws + [seq, base] + health`` into
        the struct's arguments (a C-level gather instead of a Python loop per frame)."""
        if 0 in sizes:
            raise ValueError("a value does not fit the frame's 32-bit value")
        nm, n = self.n_metrics, len(sizes)
        fmt = [">BBIIB"]
        consts = [VERSION, 0 if self._health_dt is None else FLAG_HEALTH, len(self.sample_dts)]
        order: list[tuple[str, int]] = [("c", 0), ("c", 1), ("v", n), ("v", n + 1), ("c", 2)]
        for k, dt in enumerate(self.sample_dts):
            fmt.append("HB")
            order += (("c", len(consts)), ("c", len(consts) + 1))
            consts += (dt, nm)
            for j in range(nm):
                size = sizes[k * nm + j]
                fmt.append("H" + _CHAR[size])
                order += (("c", len(consts)), ("v", k * nm + j))
                consts.append(self._tag_words[j] | size)
        if self._health_dt is not None:
            fmt.append("HBhhBH")
            order += (("c", len(consts)), ("c", len(consts) + 1))
            consts += (self._health_dt, 0x0F)
            order += (("v", n + 2), ("v", n + 3), ("v", n + 4), ("v", n + 5))
        var = len(consts)
        gather = itemgetter(*(i if where == "c" else var + i for where, i in order))
        entry = (struct.Struct("".join(fmt)).pack, consts, gather)
        if len(self._cache) >= 4096:
            self._cache.clear()
        self._cache[sizes] = entry
        return entry

    def pack(self, seq: int, base_s: int, raws: Sequence[int],
             health: tuple[int, int, int, int] | None = None) -> bytes:
        """A frame of ``raws``; ``health`` = (rsrp 0.1 dBm, sinr 0.1 dB, CE level, battery mV)."""
        lo, hi = min(raws), max(raws)
        if lo >= 128 and hi < 32768:  # the common cases: one TLV size for the whole frame
            sizes = self._all2
        elif lo >= 32768 and hi < 2147483648:
            sizes = self._all4
        elif lo >= -128 and hi < 128:
            sizes = self._all1
        else:
            sizes = bytes([1 if -128 <= r < 128 else 2 if -32768 <= r < 32768
                           else 4 if -2147483648 <= r < 2147483648 else 0 for r in raws])
        entry = self._cache.get(sizes)
        if entry is None:
            if len(raws) != self.n_metrics * len(self.sample_dts):
                raise ValueError(f"{len(raws)} values for {len(self.sample_dts)} samples "
                                 f"of {self.n_metrics} metrics")
            entry = self._compile(sizes)
        if not 0 < base_s < 4294967296:
            raise ValueError("base_time must be 1..2**32-1")
        if (health is None) != (self._health_dt is None):
            raise ValueError("health block: pass one exactly when the layout has one")
        pack, consts, gather = entry
        body = pack(*gather([*consts, *raws, seq & 0xFFFFFFFF, base_s, *(health or ())]))
        frame = body + _U16.pack(binascii.crc_hqx(body, 0xFFFF))
        return binascii.hexlify(frame) if self.hex_text else frame


class _Short(Exception):
    pass


def _take(data: bytes, pos: int, n: int) -> int:
    if pos + n > len(data):
        raise _Short
    return pos + n


def decode_frame(device_id: str, frame: bytes, received_ns: int) -> RecordBatch | DecodeError:
    if len(frame) > MAX_PAYLOAD_BYTES:
        return DecodeError(OVERSIZE, f"{len(frame)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    if len(frame) >= 2 and not frame.translate(None, _HEX_DIGITS):
        if len(frame) % 2:
            return DecodeError(TRUNCATED, "hex payload has an odd number of digits")
        frame = binascii.unhexlify(frame)
    fast = _LAYOUTS.decode(device_id, frame, received_ns)
    if fast is not None:
        return fast
    decoded = _walk(device_id, frame, received_ns)
    if not isinstance(decoded, DecodeError):
        _LAYOUTS.learn(frame)
    return decoded


def _walk(device_id: str, frame: bytes, received_ns: int) -> RecordBatch | DecodeError:
    """The general decoder: every check, in the documented order."""
    if not frame:
        return DecodeError(TRUNCATED, "empty payload")
    if frame[0] != VERSION:
        return DecodeError(UNSUPPORTED_VERSION, f"frame version {frame[0]}, expected {VERSION}")
    body = frame[:-2]
    try:
        pos = _take(body, 0, _HEADER.size)
        _, flags, seq, base, n_samples = _HEADER.unpack_from(body, 0)
        if flags & ~FLAG_HEALTH or n_samples == 0:
            return DecodeError(MALFORMED, f"flags={flags:#x} n_samples={n_samples}")
        samples: list[tuple[int, list[tuple[int, int]]]] = []
        for _ in range(n_samples):
            start = pos
            pos = _take(body, pos, _SAMPLE.size)
            dt, n_tlv = _SAMPLE.unpack_from(body, start)
            tlvs: list[tuple[int, int]] = []
            for _ in range(n_tlv):
                start = pos
                pos = _take(body, pos, 2)
                tag, size = body[start], body[start + 1]
                if size not in (1, 2, 4):
                    return DecodeError(MALFORMED, f"TLV tag {tag:#x} has length {size}")
                pos = _take(body, pos, size)
                tlvs.append((tag, int.from_bytes(body[pos - size:pos], "big", signed=True)))
            samples.append((dt, tlvs))
        health_fields: tuple[int, int, int | None, int | None, int | None, int | None] | None = None
        if flags & FLAG_HEALTH:
            start = pos
            pos = _take(body, pos, 3)
            h_dt, mask = _U16.unpack_from(body, start)[0], body[start + 2]
            vals: list[int | None] = []
            for bit, size in ((1, 2), (2, 2), (4, 1), (8, 2)):
                if mask & bit:
                    start = pos
                    pos = _take(body, pos, size)
                    chunk = body[start:pos]
                    vals.append(int.from_bytes(chunk, "big", signed=bit in (1, 2)))
                else:
                    vals.append(None)
            health_fields = (h_dt, mask, vals[0], vals[1], vals[2], vals[3])
    except _Short:
        return DecodeError(TRUNCATED, f"frame ends early ({len(frame)} bytes)")
    if len(frame) < pos + 2:
        return DecodeError(TRUNCATED, "frame ends before its CRC")
    if pos != len(body):
        return DecodeError(MALFORMED, f"{len(body) - pos} unexpected bytes before the CRC")
    if _U16.unpack_from(frame, pos)[0] != crc16(body):
        return DecodeError(BAD_CRC, "CRC-16 mismatch")
    if base == 0:
        return DecodeError(BAD_TIMESTAMP, "base_time is zero (device clock not set)")
    if sum(len(tlvs) for _, tlvs in samples) > MAX_RECORDS_PER_UPLINK:
        return DecodeError(OVERSIZE, f"more than {MAX_RECORDS_PER_UPLINK} readings in one frame")
    readings: list[Reading] = []
    last_dt = 0
    seen: set[tuple[int, int]] = set()  # (tag, dt): one value per metric and time
    for dt, tlvs in samples:
        if dt < last_dt:
            return DecodeError(BAD_TIMESTAMP, f"sample at +{dt}s after one at +{last_dt}s")
        last_dt = dt
        time_ns = (base + dt) * _NS
        for tag, raw in tlvs:
            entry = TAGS.get(tag)
            if entry is None:
                return DecodeError(UNKNOWN_METRIC, f"unknown TLV tag {tag:#x}")
            if (tag, dt) in seen:
                return DecodeError(MALFORMED, f"TLV tag {tag:#x} appears twice at +{dt}s")
            seen.add((tag, dt))
            metric, decimals = entry
            value = raw / _SCALE[decimals] if decimals else float(raw)
            readings.append(Reading(device_id, metric, time_ns, value, received_ns, seq))
    health: tuple[Health, ...] = ()
    if health_fields is not None:
        h_dt, _mask, rsrp, sinr, ce, mv = health_fields
        health = (Health(
            device_id, (base + h_dt) * _NS,
            None if rsrp is None else rsrp / 10, None if sinr is None else sinr / 10,
            ce, None if mv is None else mv / 1000,
        ),)
    return RecordBatch(device_id, received_ns, tuple(readings), (), health)


class NbiotFrameCodec:
    """One instance encodes raw frames, the other hex text; both decode either."""

    def __init__(self, *, hex_text: bool = False) -> None:
        self.hex_text = hex_text
        self.name = "nbiot-frame-hex" if hex_text else "nbiot-frame"

    def encode(self, batch: RecordBatch) -> bytes:
        if len(batch.health) > 1:
            raise ValueError("an NB-IoT frame carries at most one health block")
        seq = batch.readings[0].seq if batch.readings else 0
        frame = encode_frame(batch.readings, batch.health[0] if batch.health else None, seq)
        return binascii.hexlify(frame) if self.hex_text else frame

    def decode(self, device_id: str, payload: bytes, received_ns: int) -> RecordBatch | DecodeError:
        return decode_frame(device_id, payload, received_ns)
