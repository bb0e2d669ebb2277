"""One reading's whole path on real services.

MQTT -> bridge -> Kafka -> normaliser -> Kafka -> writer -> PostgreSQL.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from brokers.mqtt_base import MqttClientKind
from citysense.settings import CommonSettings
from simulators.air import air_device_ids
from simulators.fleet import Fleet
from simulators.runner import interleaved_air_uplinks
from tests.conftest import ServiceEnv
from tests.integration.pipeline import count_rows, running_pipeline, wait_until

pytestmark = [pytest.mark.services, pytest.mark.slow]

DEVICES = 100
UPLINKS_PER_DEVICE = 100  # 10,000 uplinks, 6 readings each


async def test_ten_thousand_uplinks_from_a_hundred_devices_land_exactly_once(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, database: str, unique: str,
    mqtt_client_kind: MqttClientKind,
) -> None:
    ids = air_device_ids(DEVICES)
    # A recent, minute-aligned start (inside any retention window), different for every run.
    minute = 60 * 10**9
    start_ns = (time.time_ns() // minute - UPLINKS_PER_DEVICE - int(unique[:3], 16)) * minute
    uplinks = list(interleaved_air_uplinks(ids, UPLINKS_PER_DEVICE, seed=7, start_ns=start_ns))
    expected = {
        (r.device_id, r.metric, r.time_ns // 1000, r.value) for u in uplinks for r in u.batch.readings
    }
    assert len(uplinks) == 10_000 and len(expected) == 60_000

    fleet = Fleet(service_env.mqtt_url, service_env.device_secret, ids)
    await fleet.start()
    try:
        async with running_pipeline(
            pipeline_settings, bridge_user=service_env.bridge_username,
            bridge_password=service_env.bridge_password, database_url=database,
            share_group=f"test-{unique}", mqtt_client=mqtt_client_kind,
        ) as pipeline:
            stats = await fleet.publish_all(uplinks, qos=1)
            assert (stats.sent, stats.acked, stats.errors) == (10_000, 10_000, 0)

            async def all_rows() -> bool:
                return await count_rows(database) >= len(expected)

            await wait_until(all_rows, 120, "60,000 rows in PostgreSQL")
            assert await _rows(database) == expected

            # The same uplinks again (a device re-sending after a lost PUBACK): nothing changes.
            forwarded_before = pipeline.bridge.forwarded
            stats = await fleet.publish_all(uplinks, qos=1)
            assert stats.errors == 0

            async def all_forwarded_again() -> bool:
                return pipeline.bridge.forwarded >= forwarded_before + 10_000

            await wait_until(all_forwarded_again, 120, "the re-sent uplinks to reach Kafka")
            assert pipeline.writer is not None
            writer, normaliser = pipeline.writer, pipeline.normaliser

            async def writer_caught_up() -> bool:
                return (normaliser.stage.records_committed >= 20_000
                        and writer.stage.records_committed >= normaliser.readings_out)

            await wait_until(writer_caught_up, 120, "the re-sent uplinks to pass the writer")
            assert await count_rows(database) == len(expected)
            assert pipeline.normaliser.dead_letters == 0
    finally:
        await fleet.stop()


async def _rows(database: str) -> set[tuple[str, str, int, float]]:
    async with await psycopg.AsyncConnection.connect(database) as conn:
        cur = await conn.execute(
            "SELECT device_id, metric, (extract(epoch FROM time) * 1000000)::bigint, value FROM readings"
        )
        return {(d, m, int(t), float(v)) for d, m, t, v in await cur.fetchall()}
