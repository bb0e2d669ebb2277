"""Settings of ``citysense up`` (``CITYSENSE_`` prefix; command-line options override them).

Only the real environment is read: ``up`` ignores ``.state/env`` (the
services of ``deploy/local``), so "no configuration" means embedded parts.
Each of ``CITYSENSE_DATABASE_URL``, ``CITYSENSE_KAFKA_BOOTSTRAP`` and
``CITYSENSE_MQTT_URL`` switches its part to the real service.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from brokers.mqtt_base import MqttClientKind
from citysense.settings import CommonSettings
from ingest.settings import BRIDGE_MQTT_CLIENT_DEFAULT


class UpSettings(CommonSettings):
    # Where the embedded PostgreSQL, Mosquitto's persistence and the session's secrets live.
    up_data_dir: Path = Path(".citysense-data")  # relative to the working directory
    up_pg_port: int = Field(default=15432, ge=1, le=65535)
    up_mqtt_port: int = Field(default=11883, ge=1, le=65535)
    up_api_port: int = Field(default=8000, ge=1, le=65535)
    # How much faster than real time the scenario's last 65 minutes replay before going live.
    up_speed: float = Field(default=60.0, ge=1, le=3600)
    # The embedded MQTT broker: Mosquitto when installed ("auto"), else the project's own
    # (brokers/mqtt_broker; no PyPI broker passed the checks, see citysense/launch/README.md).
    up_broker: Literal["auto", "mosquitto", "citysense"] = "auto"
    # With CITYSENSE_MQTT_URL set: the accounts the bridge and the devices log in with.
    mqtt_bridge_username: str = "citysense-bridge"
    mqtt_bridge_password: SecretStr | None = None
    mqtt_loadgen_username: str = "citysense-loadgen"
    mqtt_loadgen_password: SecretStr | None = None
    device_secret: SecretStr | None = None
    bridge_mqtt_client: MqttClientKind = BRIDGE_MQTT_CLIENT_DEFAULT  # as `citysense bridge`'s


@dataclass(frozen=True)
class SessionSecrets:
    """Generated once per data directory (``secrets.json``, mode 0600); never in the repo."""

    device_secret: str
    bridge_password: str
    loadgen_password: str

    @classmethod
    def load_or_create(cls, data_dir: Path) -> SessionSecrets:
        path = data_dir / "secrets.json"
        if path.is_file():
            return cls(**json.loads(path.read_text()))
        made = cls(*(secrets.token_urlsafe(24) for _ in range(3)))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(made), f)
        return made
