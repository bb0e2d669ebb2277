"""PostgreSQL restarted mid-stream: the writer retries, commits offsets only after the rows are
durable, and every acknowledged uplink is stored exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.faults.harness import Accounting, Pipeline, Scenario, assert_exact, service

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]


async def _restart_postgres(pipeline: Pipeline) -> None:
    await asyncio.to_thread(service, "postgres", "down")
    await asyncio.sleep(5)
    await asyncio.to_thread(service, "postgres", "up")


async def test_postgres_restart_mid_stream_loses_and_doubles_nothing(
    make_scenario: Callable[..., Scenario], record_accounting: Callable[[Accounting], None],
) -> None:
    scenario = make_scenario("postgres restart")
    row = await scenario.run(_restart_postgres)
    record_accounting(row)
    assert_exact(row, scenario)
