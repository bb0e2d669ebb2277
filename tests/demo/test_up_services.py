"""``citysense up`` with all three URLs set runs the same stages against the real services.

Kafka and PostgreSQL are the local services (fresh topics, consumer groups and database for
this test). The broker is a Mosquitto of the test's own (started like ``up`` starts its embedded
one), so the test's bridge never joins the shared broker's ``$share/citysense-bridge`` group.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto
from tests.conftest import ServiceEnv
from tests.demo.test_up import clean_env, data_dir, free_port  # noqa: F401 - data_dir is a fixture

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_up_on_kafka_postgres_and_a_broker(service_env: ServiceEnv, empty_database: str, unique: str,
                                           data_dir: Path) -> None:  # noqa: F811
    mosquitto = find_mosquitto()
    assert mosquitto, "the services include Mosquitto, so its binary is installed"
    data_dir.mkdir(parents=True)
    broker = EmbeddedMosquitto(data_dir.parent / "broker", free_port(), mosquitto)
    broker.configure({"citysense-bridge": "bridge-pw", "citysense-loadgen": "loadgen-pw"}, [])
    broker.start()
    env = clean_env(
        CITYSENSE_DATABASE_URL=empty_database, CITYSENSE_KAFKA_BOOTSTRAP=service_env.kafka_bootstrap,
        CITYSENSE_MQTT_URL=broker.url, CITYSENSE_MQTT_BRIDGE_PASSWORD="bridge-pw",
        CITYSENSE_MQTT_LOADGEN_PASSWORD="loadgen-pw",
        CITYSENSE_TOPIC_RAW=f"test.{unique}.raw", CITYSENSE_TOPIC_READINGS=f"test.{unique}.readings",
        CITYSENSE_TOPIC_DLQ=f"test.{unique}.dlq", CITYSENSE_TOPIC_ALERTS=f"test.{unique}.alerts",
        CITYSENSE_RAW_PARTITIONS="2", CITYSENSE_READINGS_PARTITIONS="2", CITYSENSE_DLQ_PARTITIONS="1",
        CITYSENSE_NORMALISE_GROUP=f"test.{unique}.normalise", CITYSENSE_WRITER_GROUP=f"test.{unique}.writer",
        CITYSENSE_ALERTS_GROUP=f"test.{unique}.alerts",
    )
    log = data_dir.parent / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "citysense", "up", "--data-dir", str(data_dir),
             "--api-port", str(free_port())], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline, bridges = time.monotonic() + 90, 0
        while time.monotonic() < deadline and proc.poll() is None and not bridges:
            time.sleep(1)
            with psycopg.connect(empty_database) as conn:
                if conn.execute("SELECT to_regclass('readings') IS NOT NULL").fetchone() == (True,):
                    row = conn.execute("SELECT count(*) FROM readings WHERE device_id LIKE %s",
                                       ("brg-%",)).fetchone()
                    bridges = row[0] if row else 0
        assert bridges > 0, log.read_text()[-3000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()
    text = log.read_text()
    assert "Kafka " + service_env.kafka_bootstrap in text and "in-memory" not in text
    assert "embedded PostgreSQL" not in text and not (data_dir / "postgres").exists()
    assert "stopped cleanly" in text
