"""The bridge notices what used to pass silently: a competing consumer in its shared
subscription, and the loss of its MQTT connection (here: its session taken over)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from brokers.base import TopicSpec
from brokers.memory import MemoryBus
from brokers.mqtt_base import MqttClientApi, MqttClientKind, MqttConfig, make_mqtt_client
from citysense.metrics import Metrics
from ingest.bridge import Bridge
from tests.conftest import ServiceEnv
from tests.integration.pipeline import wait_until

pytestmark = pytest.mark.services


def bridge_client(env: ServiceEnv, client_id: str, kind: MqttClientKind) -> MqttClientApi:
    config = MqttConfig(url=env.mqtt_url, username=env.bridge_username, password=env.bridge_password,
                        client_id=client_id)
    return make_mqtt_client(kind, config, manual_ack=True)


async def start_bridge(env: ServiceEnv, unique: str, registry: CollectorRegistry, kind: MqttClientKind,
                       timeout_s: float = 1.5) -> tuple[Bridge, asyncio.Task[None]]:
    bus = MemoryBus()
    await bus.create_topics([TopicSpec("raw", 1), TopicSpec("dlq", 1)])
    bridge = Bridge(bridge_client(env, f"citysense-bridge-{unique}", kind), bus.producer(), "raw",
                    share_group=f"test-{unique}", dlq_topic="dlq", metrics=Metrics(registry),
                    canary_interval_s=0.2, canary_timeout_s=timeout_s)
    task = asyncio.create_task(bridge.run())
    await asyncio.wait_for(bridge.ready.wait(), 20)
    return bridge, task


async def stop_bridge(bridge: Bridge, task: asyncio.Task[None]) -> None:
    bridge.request_stop()
    await asyncio.wait_for(task, 30)


def canaries(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("citysense_bridge_canaries_total", {"outcome": outcome}) or 0.0


async def test_canaries_come_back_when_the_bridge_is_alone_in_its_group(
    service_env: ServiceEnv, unique: str, mqtt_client_kind: MqttClientKind,
) -> None:
    registry = CollectorRegistry()
    bridge, task = await start_bridge(service_env, unique, registry, mqtt_client_kind)
    try:
        await asyncio.sleep(3.0)
        assert registry.get_sample_value("citysense_mqtt_connected", {"stage": "bridge"}) == 1
    finally:
        await stop_bridge(bridge, task)
    assert canaries(registry, "returned") >= 5
    assert canaries(registry, "lost") == 0 and bridge.canaries_lost == 0
    assert bridge.forwarded == 0  # canaries never reach Kafka


async def test_bridge_notices_a_competing_consumer_in_its_shared_subscription(
    service_env: ServiceEnv, unique: str, caplog: pytest.LogCaptureFixture, mqtt_client_kind: MqttClientKind,
) -> None:
    registry = CollectorRegistry()
    bridge, task = await start_bridge(service_env, unique, registry, mqtt_client_kind)
    # Something that is not a bridge joins the group (here with the bridge's login: devices no
    # longer can) and swallows its share.
    thief = bridge_client(service_env, f"thief-{unique}", "paho")
    await thief.start()
    try:
        await thief.subscribe(f"$share/test-{unique}/devices/+/+/up", qos=1)
        with caplog.at_level(logging.WARNING, logger="ingest.bridge"):
            await wait_until(lambda: _true(bridge.canaries_lost > 0), 15, "a canary reported lost")
    finally:
        await thief.stop()
        await stop_bridge(bridge, task)
    assert canaries(registry, "lost") == bridge.canaries_lost > 0
    assert any("another client may be consuming the shared subscription" in r.message for r in caplog.records)


async def test_bridge_logs_and_counts_losing_its_connection(
    service_env: ServiceEnv, unique: str, caplog: pytest.LogCaptureFixture, mqtt_client_kind: MqttClientKind,
) -> None:
    registry = CollectorRegistry()
    with caplog.at_level(logging.INFO, logger="brokers.mqtt"):
        bridge, task = await start_bridge(service_env, unique, registry, mqtt_client_kind)
        try:
            # Another connection with the bridge's client id takes its session over (0x8E).
            intruder = bridge_client(service_env, f"citysense-bridge-{unique}", "paho")
            await intruder.start()
            await intruder.stop()
            await wait_until(lambda: _true(_changes(registry, "connected") >= 2), 20,
                             "the bridge reconnected")
        finally:
            await stop_bridge(bridge, task)
    # Mosquitto 2.0.11 closes the old socket without a DISCONNECT (no 0x8E "session taken over"),
    # so paho's reason is 0x80 "Unspecified error"; what matters is that it is logged and counted.
    assert _changes(registry, "disconnected") >= 1
    gauge = registry.get_sample_value("citysense_mqtt_connected", {"stage": "bridge"})
    assert gauge == 0  # stopped
    lost = [r.message for r in caplog.records
            if "lost" in r.message and f"citysense-bridge-{unique}" in r.message]
    assert lost and "reason code 0x" in lost[0], lost


def _changes(registry: CollectorRegistry, event: str, reason: str | None = None) -> float:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if (sample.name == "citysense_mqtt_connection_changes_total" and sample.labels["event"] == event
                    and (reason is None or sample.labels["reason"] == reason)):
                total += sample.value
    return total


async def _true(value: bool) -> bool:
    return value
