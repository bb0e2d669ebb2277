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
from pathlib import Path

import pytest

from brokers.kafka import KafkaBus
from citysense.settings import CommonSettings
from simulators.air import air_device_ids
from tests.conftest import ServiceEnv
from tests.faults.harness import Accounting, Devices, Pipeline, account, air_plan, service, settle
from tests.integration.pipeline import create_topics

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.faults]

DEVICES = 40
UPLINKS_PER_DEVICE = 150  # 6,000 uplinks at 400/s: 15 s of traffic, the restart in the middle
RATE = 400.0


async def test_mosquitto_restart_mid_stream_loses_no_acknowledged_uplink(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, kafka_bus: KafkaBus, database: str,
    unique: str, logs_dir: Path, record_accounting: Callable[[Accounting], None],
) -> None:
    s = pipeline_settings
    await create_topics(kafka_bus, s)
    pipeline = Pipeline.build(service_env, s, database, unique, logs_dir)
    devices = Devices(service_env.mqtt_url, service_env.device_secret, air_device_ids(DEVICES))
    plan = air_plan(DEVICES, UPLINKS_PER_DEVICE, unique)
    await pipeline.start()
    await devices.start()
    try:
        publishing = asyncio.create_task(devices.publish(plan, RATE))
        await asyncio.sleep(5)
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
        recovering = asyncio.create_task(settle(database, set(devices.acked)))
        await asyncio.wait_for(publishing, 180)
        recovery = await recovering
        await settle(database, devices.acked)
        row = await account("mosquitto restart", devices, database, s, recovery)
    finally:
        await devices.stop()
        pipeline.stop()
    record_accounting(row)
    assert row.published == len(plan) == row.acknowledged
    assert (row.lost, row.duplicates, row.dead_lettered) == (0, 0, 0), pipeline.diagnostics()
