"""Two bridges and two normalisers, each its own process, share the load with exact counts.

The bridges split the uplinks through the MQTT shared subscription, the normalisers the raw
topic's partitions through their consumer group; every uplink is stored exactly once and
each process handled some of them. Not timed.
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

from brokers.mqtt_base import MqttClientKind
from loadtests.e2e_measure import scrape, total
from loadtests.e2e_stack import Stack
from simulators.air import air_device_ids, air_uplinks
from simulators.mqtt_pool import MqttPool, topic_field
from tests.conftest import ServiceEnv

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEVICES, PER_DEVICE = 40, 10


async def _wait_for_members(stack: Stack, group: str, members: int, timeout_s: float = 60) -> None:
    """Until the group is stable with ``members`` members that each own a partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            described = (await admin.describe_consumer_groups([group]))[0]
            groups = described.groups if hasattr(described, "groups") else described
            state, found = groups[0][2], groups[0][5]
            if state == "Stable" and len(found) == members and all(m[4] for m in found):
                return
            assert time.monotonic() < deadline, f"group {group}: {state}, {len(found)} members"
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def test_two_bridges_and_two_normalisers_share_the_load_exactly(
    service_env: ServiceEnv, mqtt_client_kind: MqttClientKind,
) -> None:
    stack = Stack(partitions=4, instances={"bridge": 2, "normalise": 2},
                  extra_env={"CITYSENSE_BRIDGE_MAX_BATCH": "20", "CITYSENSE_NORMALISE_MAX_RECORDS": "20",
                             "CITYSENSE_BRIDGE_MQTT_CLIENT": mqtt_client_kind})
    await stack.start()
    try:
        await _wait_for_members(stack, stack.groups["normalise"], 2)
        pool = MqttPool("127.0.0.1", stack.mqtt_port, username="citysense-loadgen",
                        password=stack.loadgen_password, size=2)
        await pool.start()
        start_ns = time.time_ns() - 3600 * 10**9
        streams = [air_uplinks(d, PER_DEVICE, start_ns=start_ns, interval_ns=60 * 10**9)
                   for d in air_device_ids(DEVICES, prefix="scale-")]
        for _ in range(PER_DEVICE):  # interleaved, as a fleet sends
            for i, stream in enumerate(streams):
                u = next(stream)
                await pool.publish(i % 2, topic_field(u.topic), u.payload, 1)
            await asyncio.sleep(0.05)
        await pool.drain(20)
        n = DEVICES * PER_DEVICE
        assert (pool.stats.acked, pool.stats.errors) == (n, 0)
        await pool.stop()
        deadline = time.monotonic() + 90
        while True:
            async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
                cur = await conn.execute("SELECT count(*), count(DISTINCT (device_id, time)) FROM readings")
                rows, uplinks = await cur.fetchone() or (0, 0)
            if uplinks >= n:
                break
            assert time.monotonic() < deadline, f"{uplinks} of {n} uplinks stored"
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # a late duplicate would show up now
        scraped = {k: scrape(p) for k, p in stack.metrics_ports.items()}
    finally:
        await stack.stop()
    assert (uplinks, rows) == (n, n * 6)  # six readings per air uplink, each stored once
    received = {k: total(scraped[k], "citysense_messages_total", outcome="received")
                for k in ("bridge", "bridge2")}
    consumed = {k: total(scraped[k], "citysense_messages_total", outcome="consumed")
                for k in ("normalise", "normalise2")}
    produced = {k: total(scraped[k], "citysense_messages_total", outcome="produced")
                for k in ("normalise", "normalise2")}
    assert sum(received.values()) == n and all(v > 0 for v in received.values()), received
    assert sum(consumed.values()) == n and all(v > 0 for v in consumed.values()), consumed
    assert sum(produced.values()) == n, produced
