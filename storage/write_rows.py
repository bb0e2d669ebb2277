"""Records -> the rows the writer sends: readings for COPY, and one state row per device.

Pure Python on the writer's hot path, kept apart from the SQL so it can be
measured and tested alone. Times are integer microseconds: readings carry
them from the PostgreSQL epoch (2000-01-01, what binary ``timestamptz`` is),
the arrays of latest values from the Unix epoch (as ``device_state`` keeps
them).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from citysense.records import Reading, RecordBatch

Row = tuple[object, ...]

# 2000-01-01 00:00 UTC in Unix microseconds: the zero of PostgreSQL's binary timestamptz.
PG_EPOCH_US = 946_684_800 * 1_000_000
MINUTE_US = 60_000_000
_MAX_US = 2**63 - 1
_INF = float("inf")


# PostgreSQL's binary array format (array_recv): ndim, has-nulls flag, element type oid,
# then per dimension its length and lower bound, then per element its length and bytes.
# Building it with struct is several times cheaper than psycopg's generic list dumper,
# and the stage rows are the second-largest thing the writer sends.
_TEXT, _INT8, _FLOAT8 = 25, 20, 701
_ARRAY = ">iiiii"


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True, slots=True)
class _Plan:
    """How to encode the latest values of one set of metrics (cached: the sets are few)."""

    metrics: tuple[str, ...]  # sorted
    names: bytes  # the text[] of the names, ready
    int8: struct.Struct
    float8: struct.Struct
    int8_head: tuple[int, ...]
    float8_head: tuple[int, ...]
    int8_prefix: bytes  # the int8[] header alone

    def int8_array(self, items: list[int]) -> bytes:
        n = len(items)
        if items.count(items[0]) == n:  # one uplink's readings mostly share their times
            return self.int8_prefix + (b"\x00\x00\x00\x08" + items[0].to_bytes(8, "big", signed=True)) * n
        return self.int8.pack(*self.int8_head, *_with_sizes(items))


@functools.lru_cache(maxsize=4096)
def _plan(metrics_in_arrival_order: tuple[str, ...]) -> _Plan:
    metrics = tuple(sorted(metrics_in_arrival_order))
    n = len(metrics)
    parts = [struct.pack(_ARRAY, 1, 0, _TEXT, n, 1)]
    for m in metrics:
        raw = m.encode()
        parts += (struct.pack(">i", len(raw)), raw)
    # one dimension of n elements from index 1, no NULLs; each element: its size (8), its bytes
    return _Plan(metrics, b"".join(parts), struct.Struct(_ARRAY + "iq" * n), struct.Struct(_ARRAY + "id" * n),
                 (1, 0, _INT8, n, 1), (1, 0, _FLOAT8, n, 1), struct.pack(_ARRAY, 1, 0, _INT8, n, 1))


def _with_sizes(items: list[int] | list[float]) -> list[float]:
    """[a, b] -> [8, a, 8, b]: each array element is preceded by its size in bytes."""
    out: list[float] = [8] * (2 * len(items))
    out[1::2] = items
    return out


_EMPTY = tuple(struct.pack(">iii", 0, 0, oid) for oid in (_TEXT, _INT8, _FLOAT8))  # zero dimensions


@dataclass(slots=True)
class DeviceState:
    """One device's share of a batch, as ``device_state`` needs it (Unix microseconds)."""

    seen: int  # newest received time
    last: int = -1  # newest device time of any record, -1 if none
    first_reading: int = _MAX_US  # oldest reading time
    # metric -> [time, value, received] of the newest reading of the batch
    latest: dict[str, tuple[int, float, int]] = field(default_factory=dict)

    def stage_row(self, device_id: str) -> Row:
        """Times shifted to the PostgreSQL epoch (binary timestamptz), except inside the arrays
        of latest values (Unix microseconds, as ``device_state`` keeps them), sorted by metric.
        The arrays are sent as PostgreSQL's binary array format, built here (see ``_ARRAY``)."""
        shift = PG_EPOCH_US
        last = self.last - shift if self.last >= 0 else None
        latest = self.latest
        if not latest:
            return (device_id, self.seen - shift, last, _EMPTY[0], _EMPTY[1], _EMPTY[2], _EMPTY[1],
                    None, None)
        plan = _plan(tuple(latest))
        newest = [latest[m] for m in plan.metrics]
        times = [v[0] for v in newest]
        return (device_id, self.seen - shift, last, plan.names, plan.int8_array(times),
                plan.float8.pack(*plan.float8_head, *_with_sizes([v[1] for v in newest])),
                plan.int8_array([v[2] for v in newest]),
                self.first_reading - shift, max(times) - shift)

    def note(self, r: Reading, t: int, rt: int) -> None:
        have = self.latest.get(r.metric)
        if have is None or have[0] < t:  # an equal time keeps the first: as the table's key does
            self.latest[r.metric] = (t, r.value, rt)
        if t > self.last:
            self.last = t
        if t < self.first_reading:
            self.first_reading = t


@dataclass(slots=True)
class WriteRows:
    readings: list[Row] = field(default_factory=list)  # times: microseconds since 2000-01-01
    minutes: set[int] = field(default_factory=set)  # PG-epoch us of the minute buckets touched
    statuses: list[Row] = field(default_factory=list)
    health: list[Row] = field(default_factory=list)
    devices: dict[str, DeviceState] = field(default_factory=dict)

    @classmethod
    def of(cls, batches: Sequence[RecordBatch]) -> WriteRows:
        """Raises ValueError for a value that is not finite: the records' fault.

        The normaliser refuses those already; the writer checks again because one NaN
        or infinity would poison every sum and average of its rollup buckets for good.

        The cyclic garbage collector is paused meanwhile: this allocates a tuple
        per reading and no reference cycles, and the collector's passes over
        those young tuples cost a third more again (``loadtests.write_rows_bench``:
        3.4–5.1 vs 4.9–7.4 ms per 4,800 readings).
        """
        with _no_gc():
            out = cls()
            for b in batches:
                out._add(b)
            return out

    def _add(self, b: RecordBatch) -> None:
        minutes = self.minutes
        append = self.readings.append
        shift = PG_EPOCH_US
        did = b.device_id
        dev = _device(self.devices, did, b.received_ns // 1000)
        latest = dev.latest
        last, first = dev.last, dev.first_reading
        # readings of one uplink mostly share their times: convert each distinct one once
        time_ns = received_ns = -1
        t = pt = rt = 0
        for r in b.readings:
            value = r.value
            if not -_INF < value < _INF:
                raise ValueError(f"{r.device_id} {r.metric}: value {value} is not finite")
            if r.time_ns != time_ns:
                time_ns = r.time_ns
                t = time_ns // 1000
                pt = t - shift
                minutes.add(pt - pt % MINUTE_US)
            if r.received_ns != received_ns:
                received_ns = r.received_ns
                rt = received_ns // 1000
            append((r.device_id, r.metric, pt, value, rt - shift, r.seq, r.quality))
            if r.device_id != did:  # a gateway's batch may carry other devices' readings
                _device(self.devices, r.device_id, b.received_ns // 1000).note(r, t, rt)
                continue
            # DeviceState.note, inlined: this loop runs for every reading
            have = latest.get(r.metric)
            if have is None or have[0] < t:  # an equal time keeps the first, as the table's key does
                latest[r.metric] = (t, value, rt)
            if t > last:
                last = t
            if t < first:
                first = t
        for s in b.statuses:
            t = s.time_ns // 1000
            self.statuses.append((s.device_id, s.connector, t, s.state, s.error_code, s.session_id, s.info))
            last = t if t > last else last
        for h in b.health:
            t = h.time_ns // 1000
            self.health.append((h.device_id, t, h.rsrp_dbm, h.sinr_db, h.ce_level, h.battery_v))
            last = t if t > last else last
        dev.last, dev.first_reading = last, first

    def device_rows(self) -> list[Row]:
        """One stage row per device, in key order (see ``write_sql``); no garbage collection
        meanwhile, as in ``of``."""
        with _no_gc():
            return [self.devices[d].stage_row(d) for d in sorted(self.devices)]


def _device(devices: dict[str, DeviceState], device_id: str, received: int) -> DeviceState:
    dev = devices.get(device_id)
    if dev is None:
        dev = devices[device_id] = DeviceState(received)
    elif received > dev.seen:
        dev.seen = received
    return dev
