"""Settings of the simulator deployable."""

from __future__ import annotations

from pydantic import Field, SecretStr

from citysense.settings import CommonSettings


class SimulatorSettings(CommonSettings):
    device_secret: SecretStr | None = None
    # Load generator's pooled connections (the ACL lets this user write devices/+/+/up and
    # devices/+/+/+/up, and subscribe to nothing). Its own secret, never the bridge's.
    mqtt_loadgen_username: str = "citysense-loadgen"
    mqtt_loadgen_password: SecretStr | None = None
    # Used only by the benchmark's loss check (a subscriber that may read devices/#).
    mqtt_bridge_username: str = "citysense-bridge"
    mqtt_bridge_password: SecretStr | None = None
    sim_connections: int = Field(default=8, ge=1, le=256)
