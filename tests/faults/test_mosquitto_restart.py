"""Finding 4: restarting Mosquitto mid-stream loses no acknowledged uplink.

The broker persists the bridge's session and queue; after a restart with persisted state it lets
devices in only once a bridge has made its shared subscription again (Mosquitto 2.0.11 does not
persist shared subscriptions), so no uplink is acknowledged with no one to take it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

from tests.faults.harness import Accounting, Pipeline, Scenario, assert_exact, service

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]


async def _restart_mosquitto_bridge_last(pipeline: Pipeline) -> None:
    # The bridge is held (SIGSTOP) across the restart, so the devices are back before it, as
    # they would be with thousands of them reconnecting.
    bridge = pipeline.bridges[0]
    os.kill(bridge.pid, signal.SIGSTOP)
    try:
        await asyncio.to_thread(service, "mosquitto", "down")
        restarting = asyncio.create_task(asyncio.to_thread(service, "mosquitto", "up"))
        await asyncio.sleep(4)  # devices reconnect (re-sending what was unacknowledged)
    finally:
        os.kill(bridge.pid, signal.SIGCONT)
    await restarting  # returns once devices are let in


async def test_mosquitto_restart_mid_stream_loses_no_acknowledged_uplink(
    make_scenario: Callable[..., Scenario], record_accounting: Callable[[Accounting], None],
) -> None:
    scenario = make_scenario("mosquitto restart")
    row = await scenario.run(_restart_mosquitto_bridge_last)
    record_accounting(row)
    assert_exact(row, scenario)
