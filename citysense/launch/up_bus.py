"""Retention for the in-memory bus of ``citysense up``.

``brokers/memory.py`` keeps every message, as a Kafka topic without retention
would; over a long ``up`` session that is most of its memory growth. Every few
seconds ``trim_consumed`` drops the messages that every consumer group reading
a topic has committed past: no member can be handed them again (a member starts
from its group's committed offset), so nothing acknowledged is lost. The log
keeps its length (offsets are list indexes there); a dropped entry is ``None``.
Topics no group reads (the dead-letter topic in ``up``) are kept whole.
"""

from __future__ import annotations

from typing import Any

from brokers.base import TopicPartition
from brokers.memory import MemoryBus


class Trimmer:
    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self._done: dict[TopicPartition, int] = {}  # first offset not yet dropped

    def trim_consumed(self) -> int:
        """Drop what every group has committed; returns how many messages were dropped."""
        bus: Any = self._bus  # reads the bus's internals: this module exists for this bus only
        dropped = 0
        for topic, partitions in bus._logs.items():
            groups = [g for g in bus._groups.values()  # readers now, or ever (between rebalances)
                      if any(topic in m.topics for m in g.members)
                      or any(tp.topic == topic for tp in g.committed)]
            if not groups:
                continue
            for p, log in enumerate(partitions):
                tp = TopicPartition(topic, p)
                floor = min(g.committed.get(tp, 0) for g in groups)
                start = self._done.get(tp, 0)
                for offset in range(start, min(floor, len(log))):
                    log[offset] = None
                    dropped += 1
                self._done[tp] = max(start, floor)
        return dropped
