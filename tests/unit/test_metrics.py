"""Stages report into an injected registry: counts match what they handled."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from prometheus_client import REGISTRY, CollectorRegistry

from brokers.base import Message, TopicPartition, TopicSpec
from brokers.memory import MemoryBus
from brokers.stage import ConsumerStage
from citysense.metrics import Metrics


async def test_consumer_stage_counts_committed_records_and_times_batches() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("in", 2)])
    producer = bus.producer()
    await producer.start()
    await producer.send_batch("in", [(f"k{i}".encode(), b"v") for i in range(25)])
    seen: list[Message] = []

    async def handler(batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
        for msgs in batches.values():
            seen.extend(msgs)

    stage = ConsumerStage(bus, ["in"], "g", handler, max_records=10, metrics=metrics, name="t")
    task = asyncio.create_task(stage.run())
    for _ in range(100):
        if len(seen) == 25:
            break
        await asyncio.sleep(0.01)
    stage.request_stop()
    await task
    committed = {"stage": "t", "outcome": "committed"}
    assert registry.get_sample_value("citysense_records_total", committed) == 25
    batches = registry.get_sample_value("citysense_batch_seconds_count", {"stage": "t"})
    assert batches is not None and batches >= 3  # max_records=10 splits 25 records
    # Nothing leaked into the process-global registry.
    assert REGISTRY.get_sample_value("citysense_records_total", committed) is None
