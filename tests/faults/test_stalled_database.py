"""A stalled database (a lock held on the readings table for 20 s): the writer waits, holding one
bounded batch; the backlog waits in Kafka, not in the writer's memory; when the lock goes, every
acknowledged uplink is stored exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from tests.faults.harness import (
    Accounting,
    Pipeline,
    Scenario,
    assert_exact,
    stored_uplinks,
    topic_and_group_offsets,
)

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]

STALL_S = 20
MAX_RSS_GROWTH_MB = 64  # a batch and aiokafka's bounded prefetch; the stalled stream is far larger


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_stalled_database_backpressures_without_memory_growth(
    make_scenario: Callable[..., Scenario], record_accounting: Callable[[Accounting], None],
) -> None:
    samples: list[float] = []
    offsets: list[tuple[int, int]] = []  # (readings end offset, writer committed), start and end
    scenario = make_scenario("stalled database 20 s", uplinks_per_device=300)  # 12,000 at 400/s
    s = scenario.settings
    assert s.kafka_bootstrap

    async def hold_lock(pipeline: Pipeline) -> None:
        group = pipeline.writer.env["CITYSENSE_WRITER_GROUP"]
        async with await psycopg.AsyncConnection.connect(scenario.database_url) as conn:
            await conn.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")  # until commit
            for i in range(STALL_S * 2):
                await asyncio.sleep(0.5)
                samples.append(rss_mb(pipeline.writer.pid))
                if i in (4, STALL_S * 2 - 1):
                    offsets.append(await topic_and_group_offsets(s.kafka_bootstrap, s.topic_readings, group))
            await conn.commit()

    row = await scenario.run(hold_lock)
    growth = max(samples) - samples[len(samples) // 4]  # after the writer has blocked
    row = dataclasses.replace(row, note=f"writer RSS {min(samples):.0f}-{max(samples):.0f} MB")
    record_accounting(row)
    assert_exact(row, scenario)
    assert growth < MAX_RSS_GROWTH_MB, f"writer RSS grew {growth:.0f} MB while stalled: {samples}"
    # Backpressure: the normaliser went on producing, the writer committed nothing while stalled.
    (end_before, committed_before), (end_after, committed_after) = offsets
    assert end_after > end_before and committed_after == committed_before, offsets
    _, rows, _ = await stored_uplinks(scenario.database_url)
    assert rows == row.acknowledged * 6
