"""Both embedded brokers of ``citysense up`` have the rights of ``deploy/local``'s broker.

One broker of each kind per test module, configured as ``up`` configures it: Mosquitto with
``broker_auth``'s password file, dynamic-security config and ACL file, and the project's own
broker (``brokers/mqtt_broker``, used when Mosquitto is not installed) with the password file
and its per-device ACL. The real bridge's canary goes round (before, it was refused with reason
0x87 and logged every 5 s), and a device may publish only its own uplink and subscribe to
nothing but its own downlink.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from brokers.exceptions import BrokerError
from brokers.memory import MemoryBus
from brokers.mqtt import MqttClient, MqttConfig
from citysense.broker_auth import find_dynsec_plugin
from citysense.credentials import device_password
from citysense.launch.embedded_broker import EmbeddedBroker
from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto
from citysense.metrics import Metrics
from ingest.bridge import Bridge
from ingest.topics import uplink_topic
from simulators.scenario_registry import credential_hash
from tests.demo.test_up import free_port

NO_MOSQUITTO = find_mosquitto() is None or find_dynsec_plugin() is None

Broker = EmbeddedMosquitto | EmbeddedBroker
SECRET = "test-device-secret"
BRIDGE, LOADGEN = ("citysense-bridge", "bridge-pw"), ("citysense-loadgen", "loadgen-pw")
DEVICES = {"brg-01-01": "bridge", "chg-00001": "charger"}


@pytest.fixture(scope="module", params=[
    pytest.param("mosquitto", marks=pytest.mark.skipif(
        NO_MOSQUITTO, reason="needs Debian's mosquitto package (binary and dynamic-security plugin)")),
    "citysense",
])
def broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedMosquitto | EmbeddedBroker]:
    root = Path(tempfile.mkdtemp(prefix="citysense-broker-test-"))
    root.chmod(0o755)  # as root the broker runs as nobody
    broker: EmbeddedMosquitto | EmbeddedBroker = (
        EmbeddedMosquitto(root / "mosquitto", free_port(), find_mosquitto() or "")
        if request.param == "mosquitto" else EmbeddedBroker(root / "mqtt-broker", free_port()))
    broker.configure(dict([BRIDGE, LOADGEN]),
                     [(d, kind, credential_hash(SECRET, d)) for d, kind in DEVICES.items()])
    broker.start()
    yield broker
    broker.stop()


def device(broker: Broker, device_id: str, client_id: str | None = None) -> MqttClient:
    return MqttClient(MqttConfig(url=broker.url, username=device_id,
                                 password=device_password(SECRET, device_id),
                                 client_id=client_id or device_id))


@pytest.fixture
async def bridge_sub(broker: Broker) -> AsyncIterator[MqttClient]:
    sub = MqttClient(MqttConfig(url=broker.url, username=BRIDGE[0], password=BRIDGE[1],
                                client_id=f"test-sub-{time.monotonic_ns()}"), manual_ack=True)
    await sub.start()
    await sub.subscribe("$share/test/devices/+/+/up", qos=1)
    yield sub
    await sub.stop()


async def received(sub: MqttClient, seconds: float = 1.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = await sub.receive_batch(100, 0.2)
        got += [m.topic for m in batch]
        sub.ack(batch)
    return got


async def test_the_bridges_canary_goes_round_and_nothing_is_refused(
        broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    registry = CollectorRegistry()
    mqtt = MqttClient(MqttConfig(url=broker.url, username=BRIDGE[0], password=BRIDGE[1],
                                 client_id="citysense-up-bridge"), manual_ack=True)
    bridge = Bridge(mqtt, bus.producer(), "raw", dlq_topic="dlq", metrics=Metrics(registry),
                    canary_interval_s=0.2, canary_timeout_s=5.0)
    caplog.set_level(logging.WARNING)
    task = asyncio.create_task(bridge.run())

    def count(outcome: str) -> float:
        return registry.get_sample_value("citysense_bridge_canaries_total", {"outcome": outcome}) or 0.0

    try:
        deadline = time.monotonic() + 20
        while count("returned") < 5 and time.monotonic() < deadline and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # (a counter, not an event)
    finally:
        bridge.request_stop()
        await task
    assert count("returned") >= 5, (count("sent"), count("unsent"), caplog.text)
    assert count("unsent") == count("lost") == 0
    assert [r.getMessage() for r in caplog.records if "canary" in r.getMessage()] == []


async def test_a_device_publishes_only_its_own_uplink(broker: Broker,
                                                      bridge_sub: MqttClient) -> None:
    dev = device(broker, "chg-00001")
    await dev.start()
    try:
        for topic in (uplink_topic("bridge", "chg-00001"), uplink_topic("charger", "brg-01-01"),
                      "devices/_canary/chg-00001/up", "devices/charger/chg-00001/down"):
            with pytest.raises(BrokerError, match="0x87"):
                await dev.publish(topic, b"{}", qos=1)
        await dev.publish(uplink_topic("charger", "chg-00001"), b"{}", qos=1)
    finally:
        await dev.stop()
    assert await received(bridge_sub) == [uplink_topic("charger", "chg-00001")]


@pytest.mark.parametrize("topic_filter", [
    "devices/#", "devices/bridge/brg-01-01/down", "$share/citysense-bridge/devices/+/+/up", "#", "$SYS/#",
])
async def test_a_device_subscribes_to_nothing_of_others(broker: Broker, topic_filter: str) -> None:
    dev = device(broker, "chg-00001")
    await dev.start()
    try:
        with pytest.raises(BrokerError, match="subscription refused"):
            await dev.subscribe(topic_filter, qos=1)
        await dev.subscribe("devices/charger/chg-00001/down", qos=1)  # its own downlink
    finally:
        await dev.stop()


async def test_a_device_logs_in_only_as_itself(broker: Broker) -> None:
    for client in (device(broker, "chg-00001", client_id="citysense-up-bridge"),
                   MqttClient(MqttConfig(url=broker.url, username="chg-00001", password="0" * 32,
                                         client_id="chg-00001"))):
        with pytest.raises(BrokerError, match="connect refused"):
            await client.start()
        await client.stop()
