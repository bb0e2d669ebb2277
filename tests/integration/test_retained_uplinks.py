"""A retained uplink is ingested once: a bridge (re-)subscribing is not sent it again (issue 12, 10).

Mosquitto sends retained messages to shared subscriptions too, so without retain handling
"don't send" every bridge restart or reconnect would ingest each device's last retained uplink
once more.
"""

from __future__ import annotations

import pytest

from brokers.mqtt_base import MqttClientKind, MqttConfig, make_mqtt_client
from tests.conftest import ServiceEnv
from tests.integration.test_broker_security import device_client, drain

pytestmark = pytest.mark.services


async def test_a_retained_uplink_is_not_sent_again_when_the_bridge_subscribes(
    service_env: ServiceEnv, unique: str, mqtt_client_kind: MqttClientKind,
) -> None:
    topic = "devices/air/air-0097/up"  # air-0097 may publish only to its own topic
    device = device_client(service_env, "air-0097")
    await device.start()
    bridge = make_mqtt_client(mqtt_client_kind, MqttConfig(
        url=service_env.mqtt_url, username=service_env.bridge_username,
        password=service_env.bridge_password, client_id=f"citysense-bridge-{unique}"), manual_ack=True)
    try:
        await device.publish(topic, b'{"retained": true}', qos=1, retain=True)
        await bridge.start()
        await bridge.subscribe(f"$share/test-{unique}/{topic}", qos=1)
        assert await drain(bridge, expect=0, timeout_s=1.0) == []
        await device.publish(topic, b'{"live": true}', qos=1)
        assert await drain(bridge, expect=1) == [topic]  # live uplinks still flow
    finally:
        await device.publish(topic, b"", qos=1, retain=True)  # clears the retained message
        await bridge.stop()
        await device.stop()
