"""Checks for deploy/local/*.sh: idempotent `up`, `status`, and the port-in-use error.

These bring the shared local services up (first run may download Kafka jars)
and deliberately leave them running: other service tests use them.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "deploy" / "local"
SERVICES = ("postgres", "mosquitto", "kafka")
DEFAULT_PORTS = {
    "postgres": ("CITYSENSE_PG_PORT", 55432),
    "mosquitto": ("CITYSENSE_MQTT_PORT", 18830),
    "kafka": ("CITYSENSE_KAFKA_PORT", 19092),
}

pytestmark = pytest.mark.services


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _port(svc: str) -> int:
    var, default = DEFAULT_PORTS[svc]
    return int(os.environ.get(var, default))


def _state_dir() -> Path:
    return Path(os.environ.get("CITYSENSE_STATE_DIR") or ROOT / ".state")


def test_up_twice_then_status() -> None:
    # First run may install packages and fetch the Kafka jars via Maven.
    first = _run(str(LOCAL / "services.sh"), "up", timeout=1200)
    assert first.returncode == 0, first.stdout + first.stderr

    start = time.monotonic()
    second = _run(str(LOCAL / "services.sh"), "up", timeout=60)
    elapsed = time.monotonic() - start
    assert second.returncode == 0, second.stdout + second.stderr
    for svc in SERVICES:
        assert f"{svc} already up" in second.stdout, second.stdout
    assert elapsed < 3.0, f"idempotent up took {elapsed:.1f}s"

    status = _run(str(LOCAL / "services.sh"), "status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    for svc in SERVICES:
        assert f"{svc}: up (port {_port(svc)})" in lines, status.stdout


def test_env_file_written_private() -> None:
    env_file = _state_dir() / "env"
    if not env_file.exists():
        pytest.skip("services not brought up yet")
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values: dict[str, str] = {}
    for line in env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value
    assert set(values) == {
        "CITYSENSE_DATABASE_URL",
        "CITYSENSE_KAFKA_BOOTSTRAP",
        "CITYSENSE_MQTT_URL",
        "CITYSENSE_MQTT_TLS_URL",
        "CITYSENSE_MQTT_TLS_CERT_URL",
        "CITYSENSE_MQTT_CA_FILE",
        "CITYSENSE_MQTT_BRIDGE_USERNAME",
        "CITYSENSE_MQTT_BRIDGE_PASSWORD",
        "CITYSENSE_MQTT_LOADGEN_USERNAME",
        "CITYSENSE_MQTT_LOADGEN_PASSWORD",
        "CITYSENSE_DEVICE_SECRET",
    }
    assert values["CITYSENSE_DATABASE_URL"].startswith("postgresql://citysense:")
    assert values["CITYSENSE_DATABASE_URL"].endswith(f"@127.0.0.1:{_port('postgres')}/citysense")
    assert values["CITYSENSE_KAFKA_BOOTSTRAP"] == f"127.0.0.1:{_port('kafka')}"
    assert values["CITYSENSE_MQTT_URL"] == f"mqtt://127.0.0.1:{_port('mosquitto')}"


def test_up_refuses_taken_port(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        result = _run(
            str(LOCAL / "postgres.sh"),
            "up",
            env={"CITYSENSE_STATE_DIR": str(tmp_path / "state"), "CITYSENSE_PG_PORT": str(port)},
            timeout=60,
        )
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"port {port}" in result.stderr, result.stderr
    assert "already in use" in result.stderr, result.stderr
    # Nothing was initialised for the refused start.
    assert not (tmp_path / "state" / "pg" / "data").exists()
