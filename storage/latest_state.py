"""Each device's latest state as the writer derives it: pure Python, merged across writes.

A write reduces its records to one ``DeviceState`` per device (``write_rows``).
Once its time series has committed, the sink folds those into
``PendingStates``; a flush sends every pending device as one record of the
composite type ``device_batch_state`` (schema migration 4), in binary, to one
``UPDATE .. FROM unnest($1)`` (``storage.write_sql``). Merging is newer-wins per
metric with ties kept by the first, exactly what ``device_state`` does, so
merging in memory first and in the table later gives the table what one
write per batch would have given it.

Times are Unix microseconds, as ``device_state`` keeps them in its arrays; the
record's own timestamptz fields are shifted to the PostgreSQL epoch.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

from citysense.records import Reading
from storage import copy_binary as cb

# 2000-01-01 00:00 UTC in Unix microseconds: the zero of PostgreSQL's binary timestamptz.
PG_EPOCH_US = 946_684_800 * 1_000_000

# device_batch_state: 9 columns, the first a text; then two timestamptz columns
# (oid, size, value) twice
_RECORD_HEAD = (9).to_bytes(4, "big") + cb.TEXT_COLUMN
_TSTZ = cb.TIMESTAMPTZ_OID
_TWO_TIMES = struct.Struct(">iiqiiq")
Latest = tuple[int, float, int]  # time, value, received


@dataclass(slots=True)
class DeviceState:
    """One device's share of some records: last seen, newest device time, newest value per metric.

    Most devices send one uplink per write, its readings all of one time: such
    an uplink is kept as it is (``uplink``) and read straight into the record,
    which spares a dict update per reading; merging a later uplink with the same
    metrics only swaps the reference. Anything else fills ``latest``.
    """

    seen: int  # newest received time
    last: int = -1  # newest device time of any record, -1 if none
    # metric -> (time, value, received) of the newest reading
    latest: dict[str, Latest] = field(default_factory=dict)
    uplink: tuple[Reading, ...] | None = None  # the kept uplink, all at uplink_time
    uplink_metrics: tuple[str, ...] = ()
    uplink_time: int = 0
    uplink_received: int = 0

    def keep_uplink(self, readings: tuple[Reading, ...], t: int, rt: int,
                    metrics: tuple[str, ...] | None = None) -> bool:
        """Take an uplink whose readings all have time ``t`` and received time ``rt`` (and
        ``metrics``, when known already); False (and nothing done) when it cannot be kept as
        it is, so the caller notes each reading."""
        if self.latest:
            return False
        if metrics is None:
            metrics = tuple([r.metric for r in readings])
        if self.uplink is not None:
            if metrics != self.uplink_metrics:
                return False
            if t <= self.uplink_time:  # older or equal: the kept one's values stay
                self.last = max(self.last, t)
                return True
        self.uplink, self.uplink_metrics, self.uplink_time, self.uplink_received = readings, metrics, t, rt
        self.last = max(self.last, t)
        return True

    def note(self, r: Reading, t: int, rt: int) -> None:
        self.materialize()
        have = self.latest.get(r.metric)
        if have is None or have[0] < t:  # an equal time keeps the first: as the table's key does
            self.latest[r.metric] = (t, r.value, rt)
        if t > self.last:
            self.last = t

    def materialize(self) -> None:
        """Move a kept uplink into ``latest`` (empty until now: see the class docstring)."""
        rs, self.uplink = self.uplink, None
        if rs is None:
            return
        latest, t, rt = self.latest, self.uplink_time, self.uplink_received
        for r in rs:
            if r.metric not in latest:  # a metric repeated in one uplink: the first stays
                latest[r.metric] = (t, r.value, rt)

    def absorb(self, later: DeviceState) -> None:
        """Merge the state of records that came after this one's (ties keep this one's)."""
        self.seen = max(self.seen, later.seen)
        rs = later.uplink
        if rs is not None and self.keep_uplink(rs, later.uplink_time, later.uplink_received,
                                               later.uplink_metrics):
            self.last = max(self.last, later.last)
            return
        later_latest = dict(later.latest)
        if later.uplink is not None:
            for r in later.uplink:
                later_latest.setdefault(r.metric, (later.uplink_time, r.value, later.uplink_received))
        self.materialize()
        latest = self.latest
        for metric, value in later_latest.items():
            have = latest.get(metric)
            if have is None or have[0] < value[0]:
                latest[metric] = value
        self.last = max(self.last, later.last)

    def record(self, device_id: str) -> bytes:
        """The device's ``device_batch_state`` record in binary, with its size in front (an
        element of the array ``PendingStates.input`` sends); the arrays of latest values
        are sorted by metric. Its ``first_time`` is the oldest of the values it carries: the
        update replaces the stored arrays wholesale when that is newer than all they hold."""
        shift = PG_EPOCH_US
        head = _RECORD_HEAD + cb.text_field(device_id) + (
            _TWO_TIMES.pack(_TSTZ, 8, self.seen - shift, _TSTZ, 8, self.last - shift) if self.last >= 0
            else cb.timestamptz(self.seen - shift) + cb.NULL_TIMESTAMPTZ)
        if self.uplink is not None:
            shape = _uplink_shape(self.uplink_metrics)
            if shape is None:  # a metric repeats: the general way keeps the first of each
                self.materialize()
            else:
                plan, order = shape
                rs, t = self.uplink, self.uplink_time
                record = b"".join((
                    head, plan.names, plan.int8_same(t), plan.float8_column([rs[i].value for i in order]),
                    plan.int8_same(self.uplink_received),
                    _TWO_TIMES.pack(_TSTZ, 8, t - shift, _TSTZ, 8, t - shift)))
                return len(record).to_bytes(4, "big") + record
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
                _TWO_TIMES.pack(_TSTZ, 8, min(times) - shift, _TSTZ, 8, max(times) - shift)))
        return len(record).to_bytes(4, "big") + record


@functools.lru_cache(maxsize=4096)
def _uplink_shape(metrics: tuple[str, ...]) -> tuple[cb.ArrayPlan, tuple[int, ...]] | None:
    """The array plan of an uplink's metrics, and the order that sorts its readings by metric;
    None if a metric repeats."""
    if len(set(metrics)) != len(metrics):
        return None
    return cb.array_plan(metrics), tuple(sorted(range(len(metrics)), key=metrics.__getitem__))


class PendingStates:
    """The device states of the writes committed since the last flush, one per device."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceState] = {}

    def __len__(self) -> int:
        return len(self.devices)

    def absorb(self, devices: dict[str, DeviceState]) -> None:
        """Fold in a later write's states. They are taken over, not copied: the write is done."""
        mine = self.devices
        for device_id, state in devices.items():
            have = mine.get(device_id)
            if have is None:
                mine[device_id] = state
            else:
                have.absorb(state)

    def take(self) -> PendingStates:
        """Hand over everything pending and start afresh (``restore`` it should the flush fail)."""
        taken = PendingStates()
        taken.devices, self.devices = self.devices, {}
        return taken

    def restore(self, taken: PendingStates) -> None:
        """Put back what a failed flush took; states absorbed since then are the later ones."""
        since, self.devices = self.devices, taken.devices
        self.absorb(since)

    def input(self, type_oid: int) -> bytes:
        """Every pending device's record, in key order (see ``write_sql``), as one binary
        array of ``device_batch_state`` (``type_oid``: the type's oid in this database)."""
        devices = self.devices
        return cb.record_array(type_oid, [devices[d].record(d) for d in sorted(devices)])
