"""Finding 5: what the broker drops from a full bridge queue is counted, exactly, and exported.

A scratch Mosquitto (from ``deploy/local/mosquitto.sh``, on a free port) with a queue of 100
messages per session; a bridge whose Kafka is stalled. Devices get a PUBACK for every uplink; the
broker keeps what fits and drops the rest. The bridge reads the broker's ``$SYS`` drop counter:
forwarded + counted drops = acknowledged, and the counter is on the bridge's /metrics.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers.mqtt import MqttClient, MqttConfig
from citysense.metrics import Metrics
from citysense.records import decode_envelope
from ingest.bridge import Bridge
from simulators.air import air_device_ids
from tests.conftest import read_env_file
from tests.faults.harness import Devices, air_plan, free_port, service, wait_for
from tests.integration.test_bridge_backpressure import StalledProducer

pytestmark = [pytest.mark.services, pytest.mark.faults]

QUEUE = 100
HELD_BY_BRIDGE = 50
UPLINKS = 400


@pytest.fixture
def small_queue_broker() -> Iterator[dict[str, str]]:
    # Not under pytest's private tmp dir: as root the broker runs as `mosquitto` and must reach it.
    state = Path(tempfile.mkdtemp(prefix="citysense-mqtt-"))
    state.chmod(0o755)
    env = {"CITYSENSE_STATE_DIR": str(state), "CITYSENSE_MQTT_PORT": str(free_port()),
           "CITYSENSE_MQTT_TLS_PORT": str(free_port()), "CITYSENSE_MQTT_TLS_CERT_PORT": str(free_port()),
           "CITYSENSE_MQTT_QUEUE_MESSAGES": str(QUEUE), "CITYSENSE_MQTT_SYS_INTERVAL_S": "1"}
    service("mosquitto", "up", env=env)
    try:
        yield {**env, **read_env_file(state / "env")}
    finally:
        service("mosquitto", "down", env=env)
        shutil.rmtree(state, ignore_errors=True)


async def test_every_uplink_the_broker_drops_from_a_full_bridge_queue_is_counted(
    small_queue_broker: dict[str, str], unique: str
) -> None:
    env = small_queue_broker
    producer = StalledProducer()
    mqtt = MqttClient(
        MqttConfig(url=env["CITYSENSE_MQTT_URL"], username=env["CITYSENSE_MQTT_BRIDGE_USERNAME"],
                   password=env["CITYSENSE_MQTT_BRIDGE_PASSWORD"], client_id=f"bridge-{unique}",
                   clean_start=False, session_expiry_s=60, max_unacked_inbound=HELD_BY_BRIDGE),
        manual_ack=True,
    )
    metrics = Metrics()
    bridge = Bridge(mqtt, producer, "raw", share_group=f"g-{unique}", max_batch=50, metrics=metrics)
    task = asyncio.create_task(bridge.run())
    ids = air_device_ids(20)
    devices = Devices(env["CITYSENSE_MQTT_URL"], env["CITYSENSE_DEVICE_SECRET"], ids)
    plan = air_plan(20, UPLINKS // 20, unique)
    try:
        await asyncio.wait_for(bridge.ready.wait(), 20)
        await devices.start()
        await devices.publish(plan, rate=2000)
        assert len(devices.acked) == UPLINKS  # the broker acknowledged every one

        await wait_for(lambda: (bridge.broker_stats.dropped or 0) > 0, 20, "the broker's drop counter")
        producer.release.set()

        def accounted() -> bool:
            return bridge.forwarded + (bridge.broker_stats.dropped or 0) == UPLINKS

        await wait_for(accounted, 30, "forwarded + dropped to account for every acknowledged uplink")
        await asyncio.sleep(1.5)  # one more $SYS period: the counter has settled
        assert accounted()
    finally:
        await devices.stop()
        bridge.request_stop()
        await task
    dropped = bridge.broker_stats.dropped
    assert dropped is not None and dropped >= UPLINKS - QUEUE - HELD_BY_BRIDGE - 10
    forwarded = {decode_envelope(v).payload for _, v in producer.records}
    assert len(forwarded) == bridge.forwarded == UPLINKS - dropped  # each kept uplink once
    assert metrics.registry.get_sample_value("citysense_mqtt_broker_dropped_messages_total") == dropped
