"""Records -> what the writer sends: readings as binary COPY data, one state record per device.

Pure Python on the writer's hot path, kept apart from the SQL so it can be
measured and tested alone. Readings are built as binary COPY data straight
away, and the device states as one binary array of records
(``storage.copy_binary``): no tuple per reading, no adapter per field.
Times are integer microseconds: from the PostgreSQL epoch (2000-01-01, what
binary ``timestamptz`` is), except inside the arrays of latest values, from
the Unix epoch (as ``device_state`` keeps them).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from citysense.records import Reading, RecordBatch
from storage import copy_binary as cb

Row = tuple[object, ...]

# 2000-01-01 00:00 UTC in Unix microseconds: the zero of PostgreSQL's binary timestamptz.
PG_EPOCH_US = 946_684_800 * 1_000_000
MINUTE_US = 60_000_000
_MAX_US = 2**63 - 1
_INF = float("inf")

# A readings row after its device_id and metric fields: time, value, received_at, seq, quality
# (see storage.write_sql.COPY_READINGS), each field with its size in front.
_READING_TAIL = struct.Struct(">iqidiqiqih")
_READING_FIELDS = b"\x00\x07"
# device_batch_state (schema migration 4): 9 columns, the first a text; then two
# timestamptz columns (oid, size, value) twice
_RECORD_HEAD = (9).to_bytes(4, "big") + cb.TEXT_COLUMN
_TSTZ = cb.TIMESTAMPTZ_OID
_SEEN_LAST = _FIRST_NEWEST = struct.Struct(">iiqiiq")


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
class DeviceState:
    """One device's share of a batch, as ``device_state`` needs it (Unix microseconds).

    Most devices send one uplink per write, its readings all of one time: such an uplink
    is kept as it is (``uplink``) and read straight into the record, which spares a dict
    update per reading. A second uplink, or readings of several times, fill ``latest``.
    """

    seen: int  # newest received time
    last: int = -1  # newest device time of any record, -1 if none
    first_reading: int = _MAX_US  # oldest reading time
    # metric -> [time, value, received] of the newest reading of the batch
    latest: dict[str, tuple[int, float, int]] = field(default_factory=dict)
    uplink: tuple[Reading, ...] | None = None  # the one uplink so far, all at uplink_time
    uplink_time: int = 0
    uplink_received: int = 0

    def record(self, device_id: str) -> bytes:
        """The device's ``device_batch_state`` record in binary, with its size in front (an
        element of the array ``WriteRows.device_input`` sends).

        Its times are shifted to the PostgreSQL epoch (binary timestamptz),
        except inside the arrays of latest values (Unix microseconds, as
        ``device_state`` keeps them), which are sorted by metric."""
        shift = PG_EPOCH_US
        head = _RECORD_HEAD + cb.text_field(device_id) + (
            _SEEN_LAST.pack(_TSTZ, 8, self.seen - shift, _TSTZ, 8, self.last - shift) if self.last >= 0
            else cb.timestamptz(self.seen - shift) + cb.NULL_TIMESTAMPTZ)
        rs = self.uplink
        if rs is not None:
            shape = _uplink_shape(tuple([r.metric for r in rs]))
            if shape is not None:
                plan, order = shape
                t = self.uplink_time
                record = b"".join((
                    head, plan.names, plan.int8_same(t), plan.float8_column([rs[i].value for i in order]),
                    plan.int8_same(self.uplink_received),
                    _FIRST_NEWEST.pack(_TSTZ, 8, t - shift, _TSTZ, 8, t - shift)))
                return len(record).to_bytes(4, "big") + record
            self.materialize()  # a metric repeats: the general way keeps the first of each
        latest = self.latest
        if not latest:
            record = b"".join((head, cb.EMPTY_TEXT_ARRAY, cb.EMPTY_INT8_ARRAY, cb.EMPTY_FLOAT8_ARRAY,
                               cb.EMPTY_INT8_ARRAY, cb.NULL_TIMESTAMPTZ, cb.NULL_TIMESTAMPTZ))
        else:
            plan = cb.array_plan(tuple(latest))
            newest = [latest[m] for m in plan.metrics]
            times = [v[0] for v in newest]
            record = b"".join((
                head, plan.names, plan.int8_column(times), plan.float8_column([v[1] for v in newest]),
                plan.int8_column([v[2] for v in newest]),
                _FIRST_NEWEST.pack(_TSTZ, 8, self.first_reading - shift, _TSTZ, 8, max(times) - shift)))
        return len(record).to_bytes(4, "big") + record

    def materialize(self) -> None:
        """Move a kept uplink into ``latest`` (empty until now: see the class docstring)."""
        rs, self.uplink = self.uplink, None
        if rs is None:
            return
        latest, t, rt = self.latest, self.uplink_time, self.uplink_received
        for r in rs:
            if r.metric not in latest:  # an equal time keeps the first, as the table's key does
                latest[r.metric] = (t, r.value, rt)

    def note(self, r: Reading, t: int, rt: int) -> None:
        self.materialize()
        have = self.latest.get(r.metric)
        if have is None or have[0] < t:  # an equal time keeps the first: as the table's key does
            self.latest[r.metric] = (t, r.value, rt)
        if t > self.last:
            self.last = t
        if t < self.first_reading:
            self.first_reading = t


@functools.lru_cache(maxsize=4096)
def _uplink_shape(metrics: tuple[str, ...]) -> tuple[cb.ArrayPlan, tuple[int, ...]] | None:
    """The array plan of an uplink's metrics, and the order that sorts its readings by metric;
    None if a metric repeats."""
    if len(set(metrics)) != len(metrics):
        return None
    return cb.array_plan(metrics), tuple(sorted(range(len(metrics)), key=metrics.__getitem__))


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
    # each device's record as of the last slice that touched it (see encode)
    records: dict[str, bytes] = field(default_factory=dict)

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
        for _ in out.encode(len(batches)):
            pass
        return out

    def encode(self, step: int) -> Iterator[bytes]:
        """Encode the batches not encoded yet, ``step`` at a time, yielding each slice's COPY data.

        Raises ValueError for a value that is not finite or does not fit its
        column: the records' fault. The normaliser refuses those already; the
        writer checks again because one NaN or infinity would poison every sum
        and average of its rollup buckets for good.

        Each slice also (re)builds the state record of every device it touched:
        most devices appear in one slice only, so their records are ready when
        the last slice is, built while the server was still storing earlier
        slices; ``device_input`` then only joins them.

        The cyclic garbage collector is paused while a slice is encoded: this
        allocates no reference cycles, and the collector's passes over young
        objects would only cost time (``loadtests.write_rows_bench`` measures both).
        """
        batches = self.batches
        devices, records = self.devices, self.records
        while self.encoded < len(batches):
            start = len(self.readings)
            with _no_gc():
                touched: set[str] = set()
                for b in batches[self.encoded:self.encoded + step]:
                    try:
                        self._add_readings(b, touched)
                    except struct.error as exc:  # a seq or quality out of range of int8 / int2
                        raise ValueError(f"{b.device_id}: a reading does not fit its column: {exc}") from exc
                for d in touched:
                    records[d] = devices[d].record(d)
            self.encoded += step
            yield bytes(self.readings[start:])

    def _add_readings(self, b: RecordBatch, touched: set[str]) -> None:
        if not b.readings:
            return
        touched.add(b.device_id)
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
                touched.add(r.device_id)
                times += 2
                continue
            out += start
            out += metric_field(r.metric)
            out += pack(8, pt, 8, value, 8, rt - shift, 8, r.seq, 2, r.quality)
        dev = self.devices[did]
        if times == 2 and dev.uplink is None and not dev.latest:  # one time: kept as it is
            dev.uplink, dev.uplink_time, dev.uplink_received = b.readings, t, rt
            dev.last = t if t > dev.last else dev.last
            dev.first_reading = t if t < dev.first_reading else dev.first_reading
            return
        for r in b.readings:
            if r.device_id == did:
                dev.note(r, r.time_ns // 1000, r.received_ns // 1000)

    def device_input(self, type_oid: int) -> bytes:
        """One ``device_batch_state`` record per device, in key order (see ``write_sql``), as
        a binary array of records (``type_oid``: the type's oid in this database); no
        garbage collection meanwhile, as in ``encode``."""
        assert self.encoded >= len(self.batches), "device state is complete once all is encoded"
        with _no_gc():
            devices, records = self.devices, self.records
            for d in devices.keys() - records.keys():  # no readings: statuses or health only
                records[d] = devices[d].record(d)
            return cb.record_array(type_oid, [records[d] for d in sorted(records)])


def _device(devices: dict[str, DeviceState], device_id: str, received: int) -> DeviceState:
    dev = devices.get(device_id)
    if dev is None:
        dev = devices[device_id] = DeviceState(received)
    elif received > dev.seen:
        dev.seen = received
    return dev
