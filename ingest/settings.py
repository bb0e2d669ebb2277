"""Settings of the ingest deployables (bridge, normaliser)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr

from brokers.mqtt_base import MqttClientKind
from citysense.settings import CommonSettings

# The bridge's MQTT client unless CITYSENSE_BRIDGE_MQTT_CLIENT says otherwise (ingest/README.md,
# "Bridge MQTT client"); `citysense up` uses the same setting for its bridge.
BRIDGE_MQTT_CLIENT_DEFAULT: MqttClientKind = "asyncio"


class BridgeSettings(CommonSettings):
    mqtt_bridge_username: str = "citysense-bridge"
    mqtt_bridge_password: SecretStr | None = None
    bridge_share_group: str = "citysense-bridge"
    # A stable client id and a persistent session: PUBLISHes delivered to a bridge that dies
    # before acknowledging them are re-sent when it reconnects, and those that arrive while it
    # is away are queued for it. Each bridge instance needs its own id (default: per host).
    bridge_client_id: str | None = None
    bridge_session_expiry_s: int = Field(default=3600, ge=0)
    bridge_max_batch: int = Field(default=2000, ge=1)
    bridge_max_unacked: int = Field(default=5000, ge=1)
    # The MQTT client of the bridge's inbound path: "asyncio" (brokers/mqtt_asyncio.py, MQTT 5 on the
    # event loop) or "paho" (paho-mqtt 2 in its thread).
    bridge_mqtt_client: MqttClientKind = BRIDGE_MQTT_CLIENT_DEFAULT
    # Canary through the shared subscription (ingest/canary.py); 0 turns it off.
    bridge_canary_interval_s: float = Field(default=5.0, ge=0)
    bridge_canary_timeout_s: float = Field(default=60.0, gt=0)


class NormaliserSettings(CommonSettings):
    normalise_group: str = "citysense-normalise"
    normalise_max_records: int = Field(default=10_000, ge=1)  # bounded; big batches amortise acks
    # Device time this far ahead of the received time is a wrong clock: corrected and flagged.
    normalise_clock_future_tolerance_s: float = Field(default=120.0, ge=0)
    # Device times before this (epoch seconds; default 2018-01-01) are an unset clock.
    normalise_clock_floor_s: int = Field(default=1_514_764_800, ge=0)
    # A reading older than max(this, 2 x the profile's report interval) is flagged late.
    normalise_late_after_s: float = Field(default=900.0, ge=0)
    # Payloads above this are dead-lettered as oversize before decoding.
    normalise_max_payload_bytes: int = Field(default=64 * 1024, ge=1)
    # Dedupe window: uplink keys remembered per raw partition (bounded memory).
    normalise_dedupe_window: int = Field(default=20_000, ge=0)
    # Records older than this (before the received time) are dead-lettered as beyond_retention:
    # storage would drop them at its next retention pass. Keep it equal to CITYSENSE_RETENTION
    # (the writer's); 0 turns the check off.
    normalise_retention: timedelta = timedelta(days=90)
    # Registry JSON (``citysense scenario export``); unset = accept every device of a known kind.
    normalise_registry: Path | None = None
