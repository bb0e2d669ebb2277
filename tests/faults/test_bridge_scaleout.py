"""Finding 5: the bridge scales out. Two bridge processes, each with its own client id and
persistent session, share the uplinks through the shared subscription; one is SIGKILLed mid-stream
and started again: what the broker had queued for it is delivered when it is back, nothing is lost
and nothing stored twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.faults.harness import Accounting, Pipeline, Scenario, assert_exact, scrape

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]


async def _kill_second_bridge(pipeline: Pipeline) -> None:
    second = pipeline.bridges[1]
    second.kill()
    await asyncio.sleep(3)  # the broker keeps queueing its share in its session
    second.start()


async def test_two_bridges_share_the_load_and_killing_one_loses_nothing(
    make_scenario: Callable[..., Scenario], record_accounting: Callable[[Accounting], None],
) -> None:
    forwarded: list[float] = []

    async def read_counters(pipeline: Pipeline) -> None:
        for bridge in pipeline.bridges:
            port = int(bridge.env["CITYSENSE_METRICS_PORT"])
            forwarded.append(await asyncio.to_thread(
                scrape, port, "citysense_records_total", stage="bridge", outcome="forwarded"))

    scenario = make_scenario("2 bridges, SIGKILL one", bridges=2, bridge_metrics=True,
                             before_stop=read_counters)
    row = await scenario.run(_kill_second_bridge)
    record_accounting(row)
    assert_exact(row, scenario)
    # Round robin: each took a large share (the restarted one counts only since its restart,
    # which includes what was queued for it while it was away).
    assert len(forwarded) == 2 and all(f > 0.3 * row.acknowledged for f in forwarded), forwarded
