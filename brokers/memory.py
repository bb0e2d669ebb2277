"""An in-process bus with Kafka's semantics, for the embedded mode and tests.

Topics are partitioned append-only logs; consumer groups keep committed
offsets and split partitions between members, revoking (and awaiting the
member's ``on_revoked``) before they move. Keys pick partitions with a
stable hash, so per-key order holds as on Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from brokers.base import KeyValue, Message, PartitionsCallback, TopicPartition, TopicSpec
from brokers.exceptions import BrokerError, CommitFailedError, NotStartedError


def partition_for(key: bytes | None, partitions: int, counter: int) -> int:
    if key is None:
        return counter % partitions
    return zlib.crc32(key) % partitions


@dataclass
class _Group:
    members: list[MemoryConsumer] = field(default_factory=list)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MemoryBus:
    def __init__(self) -> None:
        self._logs: dict[str, list[list[Message]]] = {}
        self._groups: dict[str, _Group] = {}
        self._appended = asyncio.Condition()
        self._round_robin = 0

    # -- admin ---------------------------------------------------------
    async def create_topics(self, topics: Sequence[TopicSpec]) -> None:
        for spec in topics:
            self._logs.setdefault(spec.name, [[] for _ in range(spec.partitions)])

    async def close(self) -> None:
        return None

    def partitions(self, topic: str) -> int:
        return len(self._log(topic))

    def _log(self, topic: str) -> list[list[Message]]:
        try:
            return self._logs[topic]
        except KeyError:
            raise BrokerError(f"unknown topic {topic!r}; create it first") from None

    def end_offsets(self, topic: str) -> dict[TopicPartition, int]:
        return {TopicPartition(topic, p): len(log) for p, log in enumerate(self._log(topic))}

    def committed(self, group: str) -> dict[TopicPartition, int]:
        return dict(self._groups.get(group, _Group()).committed)

    # -- factories -----------------------------------------------------
    def producer(self) -> MemoryProducer:
        return MemoryProducer(self)

    def consumer(
        self,
        topics: Sequence[str],
        group: str,
        *,
        on_revoked: PartitionsCallback | None = None,
        on_assigned: PartitionsCallback | None = None,
    ) -> MemoryConsumer:
        return MemoryConsumer(self, list(topics), group, on_revoked, on_assigned)

    # -- internals used by producer/consumer ---------------------------
    async def _append(self, topic: str, records: Sequence[KeyValue]) -> None:
        log = self._log(topic)
        now_ms = time.time_ns() // 1_000_000
        for key, value in records:
            self._round_robin += 1
            p = partition_for(key, len(log), self._round_robin)
            part = log[p]
            part.append(Message(topic, p, len(part), key, value, now_ms))
        async with self._appended:
            self._appended.notify_all()

    async def _join(self, member: MemoryConsumer) -> None:
        group = self._groups.setdefault(member.group, _Group())
        async with group.lock:
            group.members.append(member)
            await self._rebalance(group)

    async def _leave(self, member: MemoryConsumer) -> None:
        group = self._groups.get(member.group)
        if group is None or member not in group.members:
            return
        async with group.lock:
            group.members.remove(member)
            await member._revoke(member.assignment())
            await self._rebalance(group)

    async def _rebalance(self, group: _Group) -> None:
        wanted: dict[MemoryConsumer, set[TopicPartition]] = {m: set() for m in group.members}
        topics = sorted({t for m in group.members for t in m.topics})
        tps = [TopicPartition(t, p) for t in topics for p in range(len(self._log(t)))]
        for i, tp in enumerate(tps):
            eligible = [m for m in group.members if tp.topic in m.topics]
            if eligible:
                wanted[eligible[i % len(eligible)]].add(tp)
        for member in group.members:  # revoke everything that moves first
            await member._revoke(member.assignment() - wanted[member])
        for member in group.members:
            await member._assign(wanted[member] - member.assignment(), group.committed)


class MemoryProducer:
    def __init__(self, bus: MemoryBus) -> None:
        self._bus = bus
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False

    async def send_batch(self, topic: str, records: Sequence[KeyValue]) -> None:
        if not self._started:
            raise NotStartedError("MemoryProducer.send_batch before start()")
        await self._bus._append(topic, records)


class MemoryConsumer:
    def __init__(
        self,
        bus: MemoryBus,
        topics: list[str],
        group: str,
        on_revoked: PartitionsCallback | None,
        on_assigned: PartitionsCallback | None,
    ) -> None:
        self._bus = bus
        self.topics = topics
        self.group = group
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned
        self._positions: dict[TopicPartition, int] = {}
        self._rotation = 0
        self._started = False
        self._leaving = False

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self._positions)

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._bus._join(self)

    async def stop(self) -> None:
        if not self._started or self._leaving:
            return
        self._leaving = True
        try:  # leave first: on_revoked runs while the member may still commit (commit on revoke)
            await self._bus._leave(self)
        finally:
            self._started = self._leaving = False

    async def _revoke(self, tps: frozenset[TopicPartition] | set[TopicPartition]) -> None:
        if not tps:
            return
        if self._on_revoked is not None:
            await self._on_revoked(frozenset(tps))
        for tp in tps:
            self._positions.pop(tp, None)

    async def _assign(self, tps: set[TopicPartition], committed: dict[TopicPartition, int]) -> None:
        if not tps:
            return
        for tp in tps:
            self._positions[tp] = committed.get(tp, 0)
        if self._on_assigned is not None:
            await self._on_assigned(frozenset(tps))

    def _available(self, max_records: int) -> dict[TopicPartition, list[Message]]:
        out: dict[TopicPartition, list[Message]] = {}
        budget = max_records
        # Start one partition further each call, so a backlogged partition cannot starve the rest.
        owned = list(self._positions.items())
        self._rotation = (self._rotation + 1) % max(1, len(owned))
        for tp, pos in owned[self._rotation:] + owned[: self._rotation]:
            if budget <= 0:
                break
            log = self._bus._log(tp.topic)[tp.partition]
            if pos < len(log):
                chunk = log[pos : pos + budget]
                out[tp] = chunk
                budget -= len(chunk)
        return out

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> Mapping[TopicPartition, Sequence[Message]]:
        if not self._started:
            raise NotStartedError("MemoryConsumer.getmany before start()")
        out = self._available(max_records)
        if not out and timeout_ms > 0:
            cond = self._bus._appended
            async with cond:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        cond.wait_for(lambda: bool(self._available(1))), timeout_ms / 1000
                    )
            out = self._available(max_records)
        for tp, msgs in out.items():
            self._positions[tp] = msgs[-1].offset + 1
        return out

    def lags(self) -> Mapping[TopicPartition, int]:
        return {tp: len(self._bus._log(tp.topic)[tp.partition]) - pos for tp, pos in self._positions.items()}

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not self._started:
            raise NotStartedError("MemoryConsumer.commit before start()")
        group = self._bus._groups[self.group]
        lost = set(offsets) - set(self._positions)
        if lost:
            raise CommitFailedError(f"partitions {sorted(lost)} are no longer assigned")
        for tp, offset in offsets.items():
            group.committed[tp] = offset
