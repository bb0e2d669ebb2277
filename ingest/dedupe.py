"""A bounded duplicate window per raw partition.

QoS 1 resends, retried bridge produces and replays bring the same uplink
twice. All uplinks of a device share one raw partition (key = device id),
so a window per partition sees every copy. The window remembers keys of
uplinks whose records were *produced*: keys are staged while a batch is
handled and only enter the window after the produce succeeded, so a retried
batch is never mistaken for its own duplicate (no loss). The window is two
rotating sets (at least ``capacity // 2`` newest keys are always
remembered, never more than ``capacity``), dropped when the partition is
no longer assigned. A duplicate older than the window, or one that crosses
a rebalance, passes through; the database unique key catches it.

Keys: ``(device, seq, time of the first record, CRC-32 of the payload)``
when the device numbers its uplinks. A resend is byte-identical; a device
that reboots restarts its counter, and one with an unset clock may restart
its time too, so the payload digest is what keeps a new measurement from
being taken for a resend. Otherwise one ``(device, metric, time)`` key per
record (the database's own key), and the uplink is a duplicate only when
every key was seen. A health-only uplink (an OCPP Heartbeat, whose mark is at
the received time) is keyed by its payload's CRC-32 and length.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence

from brokers.base import TopicPartition
from citysense.records import RecordBatch

Key = tuple[Hashable, ...]


def uplink_keys(batch: RecordBatch, payload: bytes = b"") -> tuple[Key, ...]:
    d = batch.device_id
    if batch.readings:
        first = batch.readings[0]
        if first.seq >= 0:
            return ((d, first.seq, first.time_ns, zlib.crc32(payload)),)
    elif not batch.statuses and payload:
        # Health only: an OCPP Heartbeat.req or BootNotification has no time of its own (its mark
        # is at the received time, different for every copy), but a resend is byte-identical and
        # each CALL has its own uniqueId.
        return ((d, "@uplink", zlib.crc32(payload), len(payload)),)
    keys: list[Key] = [(d, r.metric, r.time_ns) for r in batch.readings]
    keys.extend((d, "@status", s.connector, s.time_ns, s.state) for s in batch.statuses)
    keys.extend((d, "@health", h.time_ns) for h in batch.health)
    return tuple(keys)


class Window:
    __slots__ = ("_half", "current", "previous")

    def __init__(self, capacity: int) -> None:
        self._half = max(1, capacity // 2)
        self.current: set[Key] = set()
        self.previous: set[Key] = set()

    def __contains__(self, key: Key) -> bool:
        return key in self.current or key in self.previous

    def __len__(self) -> int:
        return len(self.current) + len(self.previous)

    def add(self, key: Key) -> None:
        self.current.add(key)
        if len(self.current) >= self._half:
            self.previous, self.current = self.current, set()


class Deduper:
    """Windows per partition plus the keys staged by the batch in flight."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._windows: dict[TopicPartition, Window] = {}
        self._staged: dict[TopicPartition, set[Key]] = {}

    def is_duplicate(self, tp: TopicPartition, keys: Sequence[Key]) -> bool:
        """True if every key was seen; otherwise stage the keys and return False."""
        if not self.capacity or not keys:
            return False
        window = self._windows.get(tp)
        staged = self._staged.get(tp)
        if staged is None:
            staged = self._staged[tp] = set()
        if len(keys) == 1:  # the common case: one key per numbered uplink
            key = keys[0]  # (the window's sets tested here: a method call per uplink costs more)
            if key in staged or (window is not None and (key in window.current or key in window.previous)):
                return True
            staged.add(key)
            return False
        if all(k in staged or (window is not None and k in window) for k in keys):
            return True
        staged.update(keys)
        return False

    def commit(self) -> None:
        """The batch's records are durable: remember its keys."""
        for tp, keys in self._staged.items():
            window = self._windows.get(tp)
            if window is None:
                window = self._windows[tp] = Window(self.capacity)
            for k in keys:
                window.add(k)
        self._staged.clear()

    def discard(self) -> None:
        """The batch failed and will be handled again: forget what it staged."""
        self._staged.clear()

    def retain(self, assigned: frozenset[TopicPartition]) -> None:
        """Drop the windows of partitions this instance no longer owns."""
        for tp in [tp for tp in self._windows if tp not in assigned]:
            del self._windows[tp]

    def size(self) -> int:
        return sum(len(w) for w in self._windows.values())
