"""Each stage, run as its own process with CITYSENSE_METRICS_PORT, exports every metric it owns."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from loadtests.e2e_measure import Samples, scrape
from loadtests.e2e_stack import Stack
from simulators.air import air_device_ids, air_uplinks
from simulators.mqtt_pool import MqttPool, topic_field
from tests.conftest import ServiceEnv

pytestmark = [pytest.mark.services, pytest.mark.slow]

COMMON = {"citysense_records_total", "citysense_messages_total", "citysense_batch_records_bucket"}
CONSUMER = {"citysense_consumer_lag_records", "citysense_consumer_lag_seconds",
            "citysense_batch_seconds_bucket"}
EXPECTED = {
    "bridge": COMMON,
    "normalise": COMMON | CONSUMER | {"citysense_dead_letters_total"},
    "write": COMMON | CONSUMER | {"citysense_db_write_seconds_bucket",
                                  "citysense_receive_to_commit_seconds_bucket"},
}
LABELS = {  # (metric, labels that must be present with a positive value)
    "bridge": [("citysense_messages_total", {"outcome": "received"}),
               ("citysense_messages_total", {"outcome": "produced"})],
    "normalise": [("citysense_messages_total", {"outcome": "consumed"}),
                  ("citysense_messages_total", {"outcome": "produced"}),
                  ("citysense_dead_letters_total", {"reason": "malformed"})],
    "write": [("citysense_db_write_seconds_count", {"operation": "write"}),
              ("citysense_db_write_seconds_count", {"operation": "flush"}),
              ("citysense_receive_to_commit_seconds_count", {})],
}


def _names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def _positive(samples: Samples, name: str, labels: dict[str, str]) -> bool:
    return any(n == name and set(labels.items()) <= lab and v > 0 for (n, lab), v in samples.items())


async def test_every_stage_process_exports_its_metrics(service_env: ServiceEnv) -> None:
    stack = Stack(partitions=2)
    await stack.start()
    try:
        pool = MqttPool("127.0.0.1", stack.mqtt_port, username="citysense-loadgen",
                        password=stack.loadgen_password, size=1)
        await pool.start()
        ids = air_device_ids(5, prefix="metrics-")
        start_ns = time.time_ns() - 600 * 10**9
        for device in ids:
            for u in air_uplinks(device, 4, start_ns=start_ns, interval_ns=60 * 10**9):
                await pool.publish(0, topic_field(u.topic), u.payload, 1)
        await pool.publish(0, topic_field("devices/air/metrics-bad/up"), b"{not json", 1)
        await pool.drain(10)
        assert (pool.stats.acked, pool.stats.errors) == (21, 0)
        await pool.stop()
        deadline = time.monotonic() + 60
        while True:
            async with await psycopg.AsyncConnection.connect(stack.database_url) as conn:
                row = await (await conn.execute("SELECT count(DISTINCT device_id) FROM readings")).fetchone()
            scraped = {k: scrape(p) for k, p in stack.metrics_ports.items()}
            if row and row[0] == 5 and all(_positive(scraped[k], n, lab)
                                           for k, checks in LABELS.items() for n, lab in checks):
                break
            assert time.monotonic() < deadline, {k: sorted(_names(v)) for k, v in scraped.items()}
            await asyncio.sleep(0.5)
        for stage, names in EXPECTED.items():
            missing = names - _names(scraped[stage])
            assert not missing, f"{stage} does not export {sorted(missing)}"
    finally:
        await stack.stop()
