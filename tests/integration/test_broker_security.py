"""Hostile devices against the real Mosquitto: what a device may not do, and that the bridge loses nothing.

The "bridge" here is a client logged in as the bridge account on a per-test shared group; the
hostile device targets that group (and the production one). Every assertion on what the bridge
received is an exact count: a device that joined the group would take every other uplink.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from brokers.exceptions import BrokerError
from brokers.mqtt import MqttClient, MqttConfig
from brokers.mqtt_base import MqttClientApi, MqttClientKind, make_mqtt_client
from citysense.credentials import device_password
from citysense.settings import CommonSettings
from tests.conftest import ServiceEnv
from tests.integration.pipeline import running_pipeline, wait_until

pytestmark = pytest.mark.services

UPLINKS = 200


def device_client(env: ServiceEnv, device_id: str, *, client_id: str | None = None,
                  password: str | None = None, session_expiry_s: int = 0) -> MqttClient:
    return MqttClient(MqttConfig(
        url=env.mqtt_url, username=device_id,
        password=password if password is not None else device_password(env.device_secret, device_id),
        client_id=client_id or device_id,
        clean_start=session_expiry_s == 0, session_expiry_s=session_expiry_s,
    ))


async def drain(sub: MqttClientApi, expect: int, timeout_s: float = 20.0) -> list[str]:
    """Topics received: until ``expect`` arrived (or ``timeout_s``), then any surplus for 0.5 s."""
    got: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expect and time.monotonic() < deadline:
        batch = await sub.receive_batch(1000, 0.5)
        got.extend(m.topic for m in batch)
        sub.ack(batch)
    while batch := await sub.receive_batch(1000, 0.5):
        got.extend(m.topic for m in batch)
        sub.ack(batch)
    return got


@pytest.fixture
async def bridge_sub(
    service_env: ServiceEnv, unique: str, mqtt_client_kind: MqttClientKind,
) -> AsyncIterator[tuple[MqttClientApi, str]]:
    group = f"test-{unique}"
    sub = make_mqtt_client(mqtt_client_kind, MqttConfig(
        url=service_env.mqtt_url, username=service_env.bridge_username, password=service_env.bridge_password,
        client_id=f"citysense-bridge-{unique}"), manual_ack=True)
    await sub.start()
    await sub.subscribe(f"$share/{group}/devices/+/+/up", qos=1)
    try:
        yield sub, group
    finally:
        await sub.stop()


async def publish_uplinks(env: ServiceEnv, device_id: str, n: int) -> None:
    dev = device_client(env, device_id)
    await dev.start()
    try:
        await dev.publish_many([(f"devices/air/{device_id}/up", b'{"seq":%d}' % i) for i in range(n)])
    finally:
        await dev.stop()


@pytest.mark.parametrize("topic_filter", [
    "$share/{group}/devices/+/+/up",
    "$share/citysense-bridge/devices/+/+/up",
    "devices/+/+/up",
    "devices/#",
    "#",
    "$SYS/#",
    "$share/{group}/#",
])
async def test_device_cannot_subscribe_to_uplinks_and_bridge_gets_every_one(
    service_env: ServiceEnv, bridge_sub: tuple[MqttClientApi, str], topic_filter: str,
) -> None:
    sub, group = bridge_sub
    # A persistent session: on main the stolen share lived on while the device was offline.
    hostile = device_client(service_env, "air-0091", session_expiry_s=300)
    await hostile.start()
    try:
        with pytest.raises(BrokerError, match="subscription refused"):
            await hostile.subscribe(topic_filter.format(group=group), qos=1)
        await publish_uplinks(service_env, "air-0090", UPLINKS)
        got = await drain(sub, UPLINKS)
        stolen = await hostile.receive_batch(UPLINKS, 0.2)
    finally:
        await hostile.stop()
        wipe = device_client(service_env, "air-0091")  # clean start: ends the persistent session
        await wipe.start()
        await wipe.stop()
    assert (len(got), len(stolen)) == (UPLINKS, 0)


async def test_device_may_subscribe_to_its_own_downlink(service_env: ServiceEnv) -> None:
    dev = device_client(service_env, "air-0092")
    await dev.start()
    try:
        await dev.subscribe("devices/air/air-0092/down", qos=1)
    finally:
        await dev.stop()


async def test_device_cannot_take_over_the_bridges_client_id(
    service_env: ServiceEnv, bridge_sub: tuple[MqttClientApi, str], unique: str,
) -> None:
    sub, _ = bridge_sub
    thief = device_client(service_env, "air-0093", client_id=f"citysense-bridge-{unique}")
    with pytest.raises(BrokerError, match="connect refused"):
        await thief.start()
    await thief.stop()
    await publish_uplinks(service_env, "air-0090", UPLINKS)
    assert len(await drain(sub, UPLINKS)) == UPLINKS
    assert sub.disconnects == 0


async def test_device_client_id_must_be_its_id(service_env: ServiceEnv) -> None:
    dev = device_client(service_env, "air-0094", client_id="air-0094-second-session")
    with pytest.raises(BrokerError, match="connect refused"):
        await dev.start()
    await dev.stop()


@pytest.mark.parametrize("topic", [
    "devices/env/air-0095/up",   # another kind, own id
    "devices/air/air-0096/up",   # own kind, another id
    "devices/air/air-0095/down",
    "devices/_canary/air-0095/up",
])
async def test_device_publishes_only_as_its_own_kind_and_id(
    service_env: ServiceEnv, bridge_sub: tuple[MqttClientApi, str], topic: str,
) -> None:
    sub, _ = bridge_sub
    dev = device_client(service_env, "air-0095")
    await dev.start()
    try:
        with pytest.raises(BrokerError, match="refused, reason code 0x87"):
            await dev.publish(topic, b"{}", qos=1)
        await dev.publish("devices/air/air-0095/up", b"{}", qos=1)
    finally:
        await dev.stop()
    assert await drain(sub, 1) == ["devices/air/air-0095/up"]


async def test_bridge_and_loadgen_have_separate_secrets(service_env: ServiceEnv) -> None:
    loadgen_password = service_env.raw["CITYSENSE_MQTT_LOADGEN_PASSWORD"]
    assert loadgen_password != service_env.bridge_password
    as_loadgen = MqttClient(MqttConfig(url=service_env.mqtt_url, username="citysense-loadgen",
                                       password=service_env.bridge_password))
    with pytest.raises(BrokerError, match="connect refused"):
        await as_loadgen.start()
    await as_loadgen.stop()
    ok = MqttClient(MqttConfig(url=service_env.mqtt_url, username="citysense-loadgen",
                               password=loadgen_password))
    await ok.start()
    try:
        with pytest.raises(BrokerError, match="subscription refused"):
            await ok.subscribe("$share/citysense-bridge/devices/+/+/up")
    finally:
        await ok.stop()


async def test_wrong_device_password_is_refused(service_env: ServiceEnv) -> None:
    started = time.monotonic()
    dev = device_client(service_env, "air-0097", password="0" * 32)
    with pytest.raises(BrokerError, match="connect refused"):
        await dev.start()
    await dev.stop()
    assert time.monotonic() - started < 15
    await asyncio.sleep(0)


async def test_real_bridge_forwards_every_uplink_while_a_device_tries_to_join_its_group(
    service_env: ServiceEnv, pipeline_settings: CommonSettings, unique: str, mqtt_client_kind: MqttClientKind,
) -> None:
    """End to end with the real bridge and Kafka: exact count on the raw topic, no canary in it."""
    group = f"test-{unique}"
    hostile = device_client(service_env, "air-0091", session_expiry_s=300)
    async with running_pipeline(pipeline_settings, bridge_user=service_env.bridge_username,
                                bridge_password=service_env.bridge_password, database_url=None,
                                share_group=group, mqtt_client=mqtt_client_kind) as p:
        await hostile.start()
        try:
            for topic_filter in (f"$share/{group}/devices/+/+/up", "$share/citysense-bridge/devices/+/+/up"):
                with pytest.raises(BrokerError, match="subscription refused"):
                    await hostile.subscribe(topic_filter, qos=1)
            await publish_uplinks(service_env, "air-0090", UPLINKS)

            async def all_forwarded() -> bool:
                return p.bridge.forwarded >= UPLINKS

            await wait_until(all_forwarded, 30, f"{UPLINKS} uplinks forwarded")
            await asyncio.sleep(1.0)  # anything extra would show up now
        finally:
            await hostile.stop()
            wipe = device_client(service_env, "air-0091")
            await wipe.start()
            await wipe.stop()
        assert p.bridge.forwarded == UPLINKS and p.bridge.canaries_lost == 0
