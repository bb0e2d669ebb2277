"""The consume -> handle -> commit loop: nothing is committed past a failing batch, and a
batch stuck retrying does not hold a rebalance hostage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence

import pytest

from brokers.base import Message, TopicPartition, TopicSpec
from brokers.exceptions import BrokerUnavailableError
from brokers.memory import MemoryBus
from brokers.stage import ConsumerStage
from storage.exceptions import StorageRejectedError


async def test_a_batch_stuck_retrying_gives_way_to_a_rebalance_uncommitted() -> None:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("in", 2)])
    producer = bus.producer()
    await producer.start()
    await producer.send_batch("in", [(f"k{i}".encode(), b"v") for i in range(20)])
    attempts = 0
    retried = asyncio.Event()

    async def database_down(batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= 3:
            retried.set()
        raise BrokerUnavailableError("down (simulated)")

    stage = ConsumerStage(bus, ["in"], "g", database_down, retry_backoff_s=0.01, max_retry_backoff_s=10)
    task = asyncio.create_task(stage.run())
    await asyncio.wait_for(retried.wait(), 5)
    newcomer = bus.consumer(["in"], "g")
    # Joining needs the stuck member's revocation; without the hand-over this waits forever
    # (the retry backoff has grown to seconds by now).
    await asyncio.wait_for(newcomer.start(), 2)
    assert newcomer.assignment() and bus.committed("g") == {}
    stage.request_stop()
    with contextlib.suppress(BrokerUnavailableError):
        await asyncio.wait_for(task, 15)
    await newcomer.stop()


async def _bus_with(records: int, partitions: int = 2) -> MemoryBus:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("in", partitions)])
    producer = bus.producer()
    await producer.start()
    await producer.send_batch("in", [(f"k{i}".encode(), b"v") for i in range(records)])
    return bus


class _Checkpoints:
    """A stage's checkpoint that records what the bus had committed when it ran."""

    def __init__(self, bus: MemoryBus, *, failures: int = 0) -> None:
        self.bus = bus
        self.failures = failures
        self.committed_at_each: list[dict[TopicPartition, int]] = []

    async def __call__(self) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailableError("database down (simulated)")
        self.committed_at_each.append(dict(self.bus.committed("g")))


async def _noop(batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
    return None


async def _run_until(stage: ConsumerStage, done: Callable[[], bool]) -> None:
    task = asyncio.create_task(stage.run())
    for _ in range(500):
        if done() or task.done():
            break
        await asyncio.sleep(0.01)
    stage.request_stop()
    await asyncio.wait_for(task, 10)


async def test_offsets_wait_for_the_checkpoint_which_runs_on_stop() -> None:
    bus = await _bus_with(20)
    checkpoints = _Checkpoints(bus)
    handled: list[int] = []

    async def handler(batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
        handled.append(sum(len(m) for m in batches.values()))

    stage = ConsumerStage(bus, ["in"], "g", handler, max_records=3, checkpoint=checkpoints,
                          checkpoint_interval_s=3600)
    await _run_until(stage, lambda: sum(handled) == 20)
    assert sum(handled) == 20 and len(handled) > 1
    # one checkpoint, on stop; nothing had been committed before it, everything after it
    assert checkpoints.committed_at_each == [{}]
    assert sum(bus.committed("g").values()) == 20
    assert (stage.records_committed, stage.batches_committed) == (20, len(handled))


async def test_without_an_interval_checkpoints_follow_each_other() -> None:
    """Each starts once the previous one has committed; it commits what was handled by then."""
    bus = await _bus_with(40, partitions=1)
    checkpoints = _Checkpoints(bus)
    stage = ConsumerStage(bus, ["in"], "g", _noop, max_records=4, checkpoint=checkpoints)
    await _run_until(stage, lambda: stage.records_committed == 40)
    seen = [sum(c.values()) for c in checkpoints.committed_at_each]
    assert len(seen) >= 3 and seen[0] == 0 and seen == sorted(set(seen)) and seen[-1] < 40
    assert bus.committed("g") == {TopicPartition("in", 0): 40}


async def test_a_failing_checkpoint_is_retried_and_nothing_is_committed_before_it_succeeds() -> None:
    bus = await _bus_with(10, partitions=1)
    checkpoints = _Checkpoints(bus, failures=3)
    stage = ConsumerStage(bus, ["in"], "g", _noop, checkpoint=checkpoints, retry_backoff_s=0.01)
    await _run_until(stage, lambda: stage.records_committed == 10)
    assert checkpoints.failures == 0 and checkpoints.committed_at_each == [{}]
    assert bus.committed("g") == {TopicPartition("in", 0): 10}


async def test_a_rebalance_checkpoints_and_commits_before_the_hand_over() -> None:
    bus = await _bus_with(20)
    checkpoints = _Checkpoints(bus)
    stage = ConsumerStage(bus, ["in"], "g", _noop, checkpoint=checkpoints, checkpoint_interval_s=3600)
    task = asyncio.create_task(stage.run())
    for _ in range(500):
        if stage._pending_records == 20:
            break
        await asyncio.sleep(0.01)
    newcomer = bus.consumer(["in"], "g")
    await asyncio.wait_for(newcomer.start(), 5)
    # the revocation checkpointed and committed everything the stage had handled
    assert checkpoints.committed_at_each == [{}]
    assert sum(bus.committed("g").values()) == 20
    stage.request_stop()
    await asyncio.wait_for(task, 10)
    await newcomer.stop()


async def test_a_slow_checkpoint_runs_beside_new_batches_and_commits_only_what_it_covers() -> None:
    bus = await _bus_with(5, partitions=1)
    producer = bus.producer()
    await producer.start()
    release = asyncio.Event()
    started = asyncio.Event()
    handled: list[int] = []
    committed_at_each: list[int] = []

    async def slow_checkpoint() -> None:
        committed_at_each.append(sum(bus.committed("g").values()))
        started.set()
        await release.wait()

    async def handler(batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
        handled.extend(m.offset for msgs in batches.values() for m in msgs)

    stage = ConsumerStage(bus, ["in"], "g", handler, checkpoint=slow_checkpoint, checkpoint_interval_s=0)
    task = asyncio.create_task(stage.run())
    await asyncio.wait_for(started.wait(), 5)
    covered = len(handled)  # what the running checkpoint took
    await producer.send_batch("in", [(b"k", b"v")] * 7)
    for _ in range(500):  # batches go on being handled while the checkpoint waits
        if len(handled) == 12:
            break
        await asyncio.sleep(0.01)
    assert len(handled) == 12 and bus.committed("g") == {}
    release.set()
    stage.request_stop()
    await asyncio.wait_for(task, 10)
    # the next checkpoint saw exactly what the slow one had committed: the offsets it took
    assert committed_at_each[:2] == [0, covered] and 0 < covered < 12
    assert bus.committed("g") == {TopicPartition("in", 0): 12}


async def test_a_checkpoint_that_fails_for_good_stops_the_stage_uncommitted() -> None:
    bus = await _bus_with(6, partitions=1)

    async def refused() -> None:
        raise StorageRejectedError("the database refused the state (simulated)")

    stage = ConsumerStage(bus, ["in"], "g", _noop, checkpoint=refused)
    with pytest.raises(StorageRejectedError):
        await asyncio.wait_for(stage.run(), 10)
    assert bus.committed("g") == {}


async def test_records_fetched_before_a_revocation_wait_for_the_next_assignment() -> None:
    """The consumer's assignment() can still list a revoked partition; its records fetched
    before the rebalance belong to the new owner and must not be handled here."""
    bus = await _bus_with(4, partitions=1)
    handled: list[int] = []
    loaded: list[int] = []

    async def handler(batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
        handled.append(sum(len(m) for m in batches.values()))

    async def on_assigned(tps: frozenset[TopicPartition]) -> None:
        loaded.append(len(handled))  # the owner's state is in before any record flows

    stage = ConsumerStage(bus, ["in"], "g", handler, on_assigned=on_assigned)
    await stage.consumer.start()
    tp = TopicPartition("in", 0)
    batches = await stage.consumer.getmany(100, 10)
    await stage._on_revoked(frozenset({tp}))
    await stage._handle(batches)
    assert handled == []
    await stage._on_assigned(frozenset({tp}))
    await stage._handle(batches)
    assert handled == [4] and loaded == [0, 0]
    await stage.consumer.stop()
