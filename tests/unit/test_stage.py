"""The consume -> handle -> commit loop: nothing is committed past a failing batch, and a
batch stuck retrying does not hold a rebalance hostage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from brokers.base import Message, TopicPartition, TopicSpec
from brokers.exceptions import BrokerUnavailableError
from brokers.memory import MemoryBus
from brokers.stage import ConsumerStage


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
