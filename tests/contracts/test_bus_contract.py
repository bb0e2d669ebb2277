"""The bus contract (brokers/base.py), one suite run against MemoryBus and KafkaBus.

Every stage relies on these properties; if an adapter fails one, the
adapter is wrong, not the stage.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from brokers.base import Bus, Consumer, Message, TopicPartition, TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from brokers.memory import MemoryBus

WAIT_S = 40.0


@dataclass
class Target:
    bus: Bus
    name: str

    async def topic(self, partitions: int) -> str:
        name = f"contract.{uuid.uuid4().hex[:10]}"
        await self.bus.create_topics([TopicSpec(name, partitions)])
        return name

    async def produce(self, topic: str, records: Sequence[tuple[bytes | None, bytes]]) -> None:
        producer = self.bus.producer()
        await producer.start()
        try:
            await producer.send_batch(topic, records)
        finally:
            await producer.stop()


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.services)])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "memory":
        bus: Bus = MemoryBus()
    else:
        env = request.getfixturevalue("service_env")
        bus = KafkaBus(KafkaConfig(bootstrap=env.kafka_bootstrap, client_id="contract", linger_ms=1))
    yield Target(bus, request.param)
    await bus.close()


def group() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


@dataclass
class Reader:
    """Polls a consumer, tracking what it received and its next offset per partition."""

    consumer: Consumer
    got: list[Message] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)

    async def poll(self, max_records: int = 500) -> int:
        batches = await self.consumer.getmany(100, max_records)
        n = 0
        for tp, msgs in batches.items():
            self.got.extend(msgs)
            self.next_offsets[tp] = msgs[-1].offset + 1
            n += len(msgs)
        return n

    async def until(self, count: int, within: float = WAIT_S) -> list[Message]:
        deadline = time.monotonic() + within
        while len(self.got) < count and time.monotonic() < deadline:
            await self.poll(count - len(self.got))
        return self.got


async def test_order_per_key_holds(target: Target) -> None:
    topic = await target.topic(4)
    keys = [f"dev-{i}".encode() for i in range(6)]
    await target.produce(topic, [(keys[i % 6], f"{i}".encode()) for i in range(300)])
    reader = Reader(target.bus.consumer([topic], group()))
    await reader.consumer.start()
    try:
        got = await reader.until(300)
    finally:
        await reader.consumer.stop()
    assert len(got) == 300
    for key in keys:
        values = [int(m.value) for m in got if m.key == key]
        assert values == sorted(values) and len(values) == 50


async def test_a_new_consumer_resumes_from_the_committed_offset(target: Target) -> None:
    topic, g = await target.topic(1), group()
    await target.produce(topic, [(b"k", str(i).encode()) for i in range(20)])
    first = Reader(target.bus.consumer([topic], g))
    await first.consumer.start()
    got = await first.until(20)
    await first.consumer.commit({TopicPartition(topic, 0): 12})
    await first.consumer.stop()
    assert len(got) == 20
    second = Reader(target.bus.consumer([topic], g))
    await second.consumer.start()
    try:
        again = await second.until(8)
    finally:
        await second.consumer.stop()
    assert [int(m.value) for m in again] == list(range(12, 20))


async def test_uncommitted_records_are_redelivered_after_a_consumer_stops(target: Target) -> None:
    topic, g = await target.topic(2), group()
    await target.produce(topic, [(f"k{i % 2}".encode(), str(i).encode()) for i in range(10)])
    first = Reader(target.bus.consumer([topic], g))
    await first.consumer.start()
    await first.until(10)
    await first.consumer.stop()  # nothing committed
    second = Reader(target.bus.consumer([topic], g))
    await second.consumer.start()
    try:
        again = await second.until(10)
    finally:
        await second.consumer.stop()
    assert sorted(int(m.value) for m in again) == list(range(10))


async def _both_assigned(a: Reader, b: Reader, want: frozenset[TopicPartition]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        await asyncio.gather(a.poll(), b.poll())
        sa, sb = a.consumer.assignment(), b.consumer.assignment()
        if sa and sb and sa | sb == want and not sa & sb:
            return
    raise AssertionError(f"not split: {a.consumer.assignment()} / {b.consumer.assignment()}")


async def test_two_consumers_in_a_group_split_the_partitions(target: Target) -> None:
    topic, g = await target.topic(4), group()
    a = Reader(target.bus.consumer([topic], g))
    b = Reader(target.bus.consumer([topic], g))
    await a.consumer.start()
    await b.consumer.start()
    try:
        await _both_assigned(a, b, frozenset(TopicPartition(topic, p) for p in range(4)))
        await target.produce(topic, [(f"k{i}".encode(), str(i).encode()) for i in range(200)])
        deadline = time.monotonic() + WAIT_S
        while len(a.got) + len(b.got) < 200 and time.monotonic() < deadline:
            await asyncio.gather(a.poll(), b.poll())
    finally:
        await a.consumer.stop()
        await b.consumer.stop()
    values = sorted(int(m.value) for m in a.got + b.got)
    assert values == list(range(200))  # split, and nothing read twice
    assert a.got and b.got


Event = tuple[str, str, frozenset[TopicPartition]]


class Owner:
    """A consumer whose ``on_revoked`` commits what it has read (commit on revoke)."""

    def __init__(self, target: Target, topic: str, g: str, events: list[Event], name: str) -> None:
        self.events, self.name = events, name
        self.reader = Reader(target.bus.consumer([topic], g, on_revoked=self._revoked,
                                                 on_assigned=self._assigned))

    async def _revoked(self, tps: frozenset[TopicPartition]) -> None:
        self.events.append(("revoked", self.name, tps))
        offsets = {tp: o for tp, o in self.reader.next_offsets.items() if tp in tps}
        if offsets:
            await self.reader.consumer.commit(offsets)

    async def _assigned(self, tps: frozenset[TopicPartition]) -> None:
        self.events.append(("assigned", self.name, tps))


async def test_revoke_fires_before_partitions_move_to_a_new_member(target: Target) -> None:
    """A reads everything; B joins: A's on_revoked runs (and commits) before B gets partitions."""
    topic, g = await target.topic(4), group()
    events: list[tuple[str, str, frozenset[TopicPartition]]] = []
    a, b = Owner(target, topic, g, events, "a"), Owner(target, topic, g, events, "b")
    await target.produce(topic, [(f"k{i}".encode(), str(i).encode()) for i in range(100)])
    await a.reader.consumer.start()
    await a.reader.until(100)
    await b.reader.consumer.start()
    try:
        await _both_assigned(a.reader, b.reader, frozenset(TopicPartition(topic, p) for p in range(4)))
        await target.produce(topic, [(f"k{i}".encode(), str(i).encode()) for i in range(100, 140)])
        deadline = time.monotonic() + WAIT_S
        while len(a.reader.got) + len(b.reader.got) < 140 and time.monotonic() < deadline:
            await asyncio.gather(a.reader.poll(), b.reader.poll())
    finally:
        await b.reader.consumer.stop()
        await a.reader.consumer.stop()
    first_b = next(e for e in events if e[:2] == ("assigned", "b"))
    before = events[: events.index(first_b)]
    assert any(e[:2] == ("revoked", "a") and first_b[2] <= e[2] for e in before), events
    assert sorted(int(m.value) for m in b.reader.got) == sorted(
        int(m.value) for m in b.reader.got if int(m.value) >= 100), "B re-read what A had handed over"
    assert sorted(int(m.value) for m in a.reader.got + b.reader.got) == list(range(140))


async def test_stopping_revokes_first_so_the_owner_can_commit(target: Target) -> None:
    """A reads 100 records and stops; its on_revoked commits; B (same group) starts after them."""
    topic, g = await target.topic(2), group()
    events: list[tuple[str, str, frozenset[TopicPartition]]] = []
    a = Owner(target, topic, g, events, "a")
    await target.produce(topic, [(f"k{i}".encode(), str(i).encode()) for i in range(100)])
    await a.reader.consumer.start()
    await a.reader.until(100)
    await a.reader.consumer.stop()
    assert events and events[-1][:2] == ("revoked", "a"), events
    await target.produce(topic, [(f"k{i}".encode(), str(i).encode()) for i in range(100, 140)])
    b = Reader(target.bus.consumer([topic], g))
    await b.consumer.start()
    try:
        await b.until(40)
        await asyncio.sleep(0.3)
        await b.poll()
    finally:
        await b.consumer.stop()
    assert sorted(int(m.value) for m in b.got) == list(range(100, 140))
