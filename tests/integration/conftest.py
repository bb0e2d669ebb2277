"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from brokers.mqtt_base import MqttClientKind


@pytest.fixture(params=["asyncio", "paho"])
def mqtt_client_kind(request: pytest.FixtureRequest) -> MqttClientKind:
    """Each bridge test runs with both MQTT clients (``CITYSENSE_BRIDGE_MQTT_CLIENT``)."""
    kind: MqttClientKind = request.param
    return kind
