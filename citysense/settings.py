"""Settings shared by every deployable (``CITYSENSE_`` environment prefix).

Each deployable subclasses :class:`CommonSettings` in its own package and is
built once, at start-up, by the command that runs it; nothing reads the
environment at import time. ``deploy/local/services.sh up`` writes the local
services' addresses and generated secrets to ``.state/env``; the CLI reads
that file as a fallback, so a developer need not export anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    return Path(os.environ.get("CITYSENSE_STATE_DIR", PROJECT_ROOT / ".state"))


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYSENSE_", extra="ignore")

    database_url: SecretStr | None = None
    kafka_bootstrap: str | None = None
    mqtt_url: str | None = None

    topic_raw: str = "citysense.raw.v1"
    topic_readings: str = "citysense.readings.v1"
    topic_dlq: str = "citysense.dlq.v1"
    topic_alerts: str = "citysense.alerts.v1"
    raw_partitions: int = Field(default=8, ge=1)
    readings_partitions: int = Field(default=8, ge=1)
    dlq_partitions: int = Field(default=2, ge=1)

    kafka_linger_ms: int = Field(default=5, ge=0)
    # A consumer's fetch waits for this many bytes or this long, whichever comes first: bigger
    # batches per handle/commit round for at most 200 ms more latency per stage. A/B at 2,000
    # uplinks/s (loadtests/README.md): platform CPU 818 -> 536 us/uplink (normaliser 171 -> 90,
    # writer 175 -> 93, Kafka 185 -> 66), p99 0.3 -> 0.75 s.
    kafka_fetch_min_bytes: int = Field(default=262_144, ge=1)
    kafka_fetch_max_wait_ms: int = Field(default=200, ge=0)
    # Replication factor of the topics the stages create (3 on a cluster; 1 on the local node).
    kafka_replication_factor: int = Field(default=1, ge=1)
    # Serve Prometheus /metrics on 127.0.0.1:<port> when set (one port per process).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Address /metrics binds to; 0.0.0.0 in a container so Prometheus can scrape it.
    metrics_host: str = "127.0.0.1"

    def masked(self) -> dict[str, Any]:
        """A dump safe to log: secrets (and passwords inside URLs) hidden."""
        return self.model_dump(mode="json")


S = TypeVar("S", bound=CommonSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment, falling back to ``.state/env``."""
    env_file = state_dir() / "env"
    if env_file.is_file():
        return cls(_env_file=env_file, **overrides)
    return cls(**overrides)
