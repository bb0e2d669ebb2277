"""Shared fixtures.

Tests marked ``services`` run against the real Kafka, PostgreSQL and
Mosquitto from ``deploy/local`` (started here, idempotently, if they are not
up). Isolation is per test: fresh uuid-named topics and a fresh database.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from brokers.kafka import KafkaBus, KafkaConfig
from citysense.settings import CommonSettings
from storage import migrations

ROOT = Path(__file__).resolve().parent.parent


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class ServiceEnv:
    database_url: str
    kafka_bootstrap: str
    mqtt_url: str
    bridge_username: str
    bridge_password: str
    device_secret: str
    raw: dict[str, str]


@pytest.fixture(scope="session")
def service_env() -> ServiceEnv:
    state = Path(os.environ.get("CITYSENSE_STATE_DIR", ROOT / ".state"))
    result = subprocess.run(
        ["bash", str(ROOT / "deploy/local/services.sh"), "up"],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"local services failed to start:\n{result.stdout}\n{result.stderr}")
    env = read_env_file(state / "env")
    # CITYSENSE_TEST_DATABASE_URL points the tests at another server (e.g. one with TimescaleDB).
    return ServiceEnv(
        database_url=os.environ.get("CITYSENSE_TEST_DATABASE_URL") or env["CITYSENSE_DATABASE_URL"],
        kafka_bootstrap=env["CITYSENSE_KAFKA_BOOTSTRAP"],
        mqtt_url=env["CITYSENSE_MQTT_URL"],
        bridge_username=env["CITYSENSE_MQTT_BRIDGE_USERNAME"],
        bridge_password=env["CITYSENSE_MQTT_BRIDGE_PASSWORD"],
        device_secret=env["CITYSENSE_DEVICE_SECRET"],
        raw=env,
    )


@pytest.fixture
def kafka_bus(service_env: ServiceEnv) -> KafkaBus:
    config = KafkaConfig(bootstrap=service_env.kafka_bootstrap, client_id="citysense-test", linger_ms=2)
    return KafkaBus(config)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def pipeline_settings(service_env: ServiceEnv, unique: str) -> CommonSettings:
    """Settings whose topics are fresh for this test."""
    return CommonSettings(
        database_url=service_env.database_url,
        kafka_bootstrap=service_env.kafka_bootstrap,
        mqtt_url=service_env.mqtt_url,
        topic_raw=f"test.{unique}.raw",
        topic_readings=f"test.{unique}.readings",
        topic_dlq=f"test.{unique}.dlq",
        topic_alerts=f"test.{unique}.alerts",
        raw_partitions=4,
        readings_partitions=4,
        dlq_partitions=1,
    )


def _db_url(base: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


@pytest.fixture
def empty_database(service_env: ServiceEnv, unique: str) -> Iterator[str]:
    """A fresh, empty database for this test (dropped afterwards)."""
    name = f"cs_test_{unique}"
    with psycopg.connect(service_env.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _db_url(service_env.database_url, name)
    finally:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        with psycopg.connect(service_env.database_url, autocommit=True) as conn:
            for attempt in range(20):
                try:
                    conn.execute(drop)
                    break
                except psycopg.errors.InsufficientPrivilege:
                    # TimescaleDB: its per-database scheduler (a superuser worker) is told to stop
                    # by DROP DATABASE but may not have exited yet when FORCE terminates backends.
                    if attempt == 19:
                        raise
                    time.sleep(0.1)


@pytest.fixture
async def database(empty_database: str) -> AsyncIterator[str]:
    """A fresh database with the current schema."""
    async with await psycopg.AsyncConnection.connect(empty_database) as conn:
        await migrations.migrate(conn)
    yield empty_database
