"""Records -> what the writer sends: readings as binary COPY data, one state per device.

Pure Python on the writer's hot path, kept apart from the SQL so it can be
measured and tested alone. Readings are built as binary COPY data straight
away (``storage.copy_binary``): no tuple per reading, no adapter per field.
Times are integer microseconds: from the PostgreSQL epoch (2000-01-01, what
binary ``timestamptz`` is) in the COPY data, from the Unix epoch in the
device states (``storage.latest_state``).
"""

from __future__ import annotations

import contextlib
import gc
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from citysense.records import RecordBatch
from storage import copy_binary as cb
from storage.latest_state import PG_EPOCH_US, DeviceState

Row = tuple[object, ...]

MINUTE_US = 60_000_000
_INF = float("inf")

# A readings row after its device_id and metric fields: time, value, received_at, seq, quality
# (see storage.write_sql.COPY_READINGS), each field with its size in front.
_READING_TAIL = struct.Struct(">iqidiqiqih")
_READING_FIELDS = b"\x00\x07"


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _row_start(device_id: str) -> bytes:
    """A readings row's field count and device_id field."""
    return _READING_FIELDS + cb.text_field(device_id)


@dataclass(slots=True)
class WriteRows:
    """What one write sends, built from its batches in two passes.

    ``plan`` is the cheap first pass: the status and health rows, the
    devices, the reading count. ``encode`` then turns the readings into
    binary COPY data a slice of batches at a time, so the sink can send each
    slice while the next is built, notes the minutes they touch, and reduces
    them to one state per device. ``of`` does both at once.
    """

    batches: Sequence[RecordBatch]
    # binary COPY rows of readings so far, without copy_binary.HEADER and TRAILER
    readings: bytearray = field(default_factory=bytearray)
    reading_count: int = 0
    minutes: set[int] = field(default_factory=set)  # PG-epoch us of the minutes readings touch
    statuses: list[Row] = field(default_factory=list)
    health: list[Row] = field(default_factory=list)
    devices: dict[str, DeviceState] = field(default_factory=dict)  # complete once all is encoded
    encoded: int = 0  # batches encoded so far

    @classmethod
    def plan(cls, batches: Sequence[RecordBatch]) -> WriteRows:
        out = cls(batches)
        devices = out.devices
        for b in batches:
            dev = _device(devices, b.device_id, b.received_ns // 1000)
            out.reading_count += len(b.readings)
            last = dev.last
            for s in b.statuses:
                t = s.time_ns // 1000
                out.statuses.append(
                    (s.device_id, s.connector, t, s.state, s.error_code, s.session_id, s.info))
                last = t if t > last else last
            for h in b.health:
                t = h.time_ns // 1000
                out.health.append((h.device_id, t, h.rsrp_dbm, h.sinr_db, h.ce_level, h.battery_v))
                last = t if t > last else last
            dev.last = last
        return out

    @classmethod
    def of(cls, batches: Sequence[RecordBatch]) -> WriteRows:
        """``plan`` and ``encode`` everything; raises ValueError as ``encode`` does."""
        out = cls.plan(batches)
        out.encode_rest()
        return out

    def encode_rest(self) -> None:
        for _ in self.encode(len(self.batches)):
            pass

    def encode(self, step: int) -> Iterator[bytes]:
        """Encode the batches not encoded yet, ``step`` at a time, yielding each slice's COPY data
        and folding its readings into the device states.

        Raises ValueError for a value that is not finite or does not fit its
        column: the records' fault. The normaliser refuses those already; the
        writer checks again because one NaN or infinity would poison every sum
        and average of its rollup buckets for good.

        The cyclic garbage collector is paused while a slice is encoded: this
        allocates no reference cycles, and the collector's passes over young
        objects would only cost time (``loadtests.write_rows_bench`` measures both).
        """
        batches = self.batches
        while self.encoded < len(batches):
            start = len(self.readings)
            with _no_gc():
                for b in batches[self.encoded:self.encoded + step]:
                    try:
                        self._add_readings(b)
                    except struct.error as exc:  # a seq or quality out of range of int8 / int2
                        raise ValueError(f"{b.device_id}: a reading does not fit its column: {exc}") from exc
            self.encoded += step
            yield bytes(self.readings[start:])

    def _add_readings(self, b: RecordBatch) -> None:
        if not b.readings:
            return
        out = self.readings
        minutes = self.minutes
        pack = _READING_TAIL.pack
        metric_field = cb.cached_text_field
        shift = PG_EPOCH_US
        did = b.device_id
        start = _row_start(did)
        # readings of one uplink mostly share their times: convert each distinct one once
        time_ns = received_ns = -1
        t = pt = rt = 0
        times = 0  # distinct times and received times met, and readings of other devices
        for r in b.readings:
            value = r.value
            if not -_INF < value < _INF:
                raise ValueError(f"{r.device_id} {r.metric}: value {value} is not finite")
            if r.time_ns != time_ns:
                time_ns = r.time_ns
                t = time_ns // 1000
                pt = t - shift
                minutes.add(pt - pt % MINUTE_US)
                times += 1
            if r.received_ns != received_ns:
                received_ns = r.received_ns
                rt = received_ns // 1000
                times += 1
            if r.device_id != did:  # a gateway's batch may carry other devices' readings
                out += _row_start(r.device_id)
                out += metric_field(r.metric)
                out += pack(8, pt, 8, value, 8, rt - shift, 8, r.seq, 2, r.quality)
                _device(self.devices, r.device_id, b.received_ns // 1000).note(r, t, rt)
                times += 2
                continue
            out += start
            out += metric_field(r.metric)
            out += pack(8, pt, 8, value, 8, rt - shift, 8, r.seq, 2, r.quality)
        dev = self.devices[did]
        if times == 2 and dev.keep_uplink(b.readings, t, rt):  # one time: kept as it is
            return
        for r in b.readings:
            if r.device_id == did:
                dev.note(r, r.time_ns // 1000, r.received_ns // 1000)


def _device(devices: dict[str, DeviceState], device_id: str, received: int) -> DeviceState:
    dev = devices.get(device_id)
    if dev is None:
        dev = devices[device_id] = DeviceState(received)
    elif received > dev.seen:
        dev.seen = received
    return dev
