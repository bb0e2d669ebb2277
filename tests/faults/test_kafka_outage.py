"""Kafka stopped for 60 s under load (finding 5): the broker buffers every acknowledged uplink for
the bridge (sized in bytes, deploy/local/README.md "Broker buffer") and the pipeline catches up.

At 2,000 uplinks/s the outage queues about 120,000 uplinks for the bridge: more than the 100,000
Mosquitto used to keep before dropping acknowledged messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.faults.harness import Accounting, Pipeline, Scenario, assert_exact, service

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]

OUTAGE_S = 60


async def _stop_kafka(pipeline: Pipeline) -> None:
    await asyncio.to_thread(service, "kafka", "down")
    await asyncio.sleep(OUTAGE_S)
    await asyncio.to_thread(service, "kafka", "up")


async def test_kafka_stopped_for_a_minute_under_load_loses_nothing(
    make_scenario: Callable[..., Scenario], record_accounting: Callable[[Accounting], None],
) -> None:
    scenario = make_scenario("kafka stopped 60 s", devices=100, uplinks_per_device=1500, rate=2000.0,
                             fault_at_s=4.0)
    row = await scenario.run(_stop_kafka)
    record_accounting(row)
    assert_exact(row, scenario)
