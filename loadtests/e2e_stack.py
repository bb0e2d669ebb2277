"""The system under test of the end-to-end benchmark, started and stopped by it.

A private Mosquitto (``deploy/local/mosquitto.sh`` with its own state
directory and a free port: the same configuration as the project's broker,
and no other engineer's bridge on the shared broker ever sees the load), a
fresh migrated database and fresh topics on the shared PostgreSQL and Kafka,
and the bridge, normaliser and writer each as its own ``citysense`` process
with its Prometheus endpoint. Everything is torn down at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from brokers.base import TopicSpec
from brokers.kafka import KafkaBus, KafkaConfig
from citysense.settings import PROJECT_ROOT, state_dir
from loadtests.e2e_measure import scrape
from loadtests.storage_common import drop_database
from storage import migrations

MOSQUITTO_SH = PROJECT_ROOT / "deploy" / "local" / "mosquitto.sh"
STAGES = ("bridge", "normalise", "write")


def read_env(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _db_url(base: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(base)
    info["dbname"] = name
    return psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]


@dataclass
class Stack:
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    partitions: int = 8
    extra_env: dict[str, str] = field(default_factory=dict)
    # processes per stage: a second bridge shares the MQTT subscription, a second normaliser or
    # writer the consumer group (keys: "bridge", "bridge2", ...)
    instances: dict[str, int] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)
    broker_dir: Path | None = None
    mqtt_port: int = 0
    tls_ports: tuple[int, int] = (0, 0)
    broker: dict[str, str] = field(default_factory=dict)
    database: str = ""
    database_url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)

    @property
    def topics(self) -> dict[str, str]:
        p = f"bench.{self.run_id}"
        return {"raw": f"{p}.raw", "readings": f"{p}.readings", "dlq": f"{p}.dlq", "alerts": f"{p}.alerts",
                "ceiling": f"{p}.ceiling"}  # the last only for the Kafka ceiling, if measured

    @property
    def groups(self) -> dict[str, str]:
        return {"normalise": f"bench-{self.run_id}-normalise", "write": f"bench-{self.run_id}-writer"}

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def bridge_password(self) -> str:
        return self.broker["CITYSENSE_MQTT_BRIDGE_PASSWORD"]

    @property
    def loadgen_password(self) -> str:
        return self.broker["CITYSENSE_MQTT_LOADGEN_PASSWORD"]

    def _broker(self, verb: str) -> None:
        assert self.broker_dir is not None
        # Every listener on a port the kernel just handed out: the TLS listeners' default (MQTT
        # port + 3, + 4) may be a client's ephemeral port at that moment.
        env = {**os.environ, "CITYSENSE_STATE_DIR": str(self.broker_dir),
               "CITYSENSE_MQTT_PORT": str(self.mqtt_port),
               "CITYSENSE_MQTT_TLS_PORT": str(self.tls_ports[0]),
               "CITYSENSE_MQTT_TLS_CERT_PORT": str(self.tls_ports[1])}
        subprocess.run(["bash", str(MOSQUITTO_SH), verb], env=env, check=True, stdout=subprocess.DEVNULL)

    async def start(self) -> None:
        self.shared = read_env(state_dir() / "env")
        # The broker's state dir must be reachable by the mosquitto user (mkdtemp makes it 0700).
        self.broker_dir = Path(tempfile.mkdtemp(prefix=f"cs-e2e-{self.run_id}-"))
        self.broker_dir.chmod(0o755)
        self.mqtt_port = free_port()
        self.tls_ports = (free_port(), free_port())
        self._broker("up")
        self.broker = read_env(self.broker_dir / "env")
        base = os.environ.get("CITYSENSE_DATABASE_URL") or self.shared["CITYSENSE_DATABASE_URL"]
        self.database = f"cs_bench_{self.run_id}"
        with psycopg.connect(base, autocommit=True) as conn:
            # Collation "C": the keys (device ids, metric names) are compared bytewise, the
            # same order as C.UTF-8's code points but without strcoll (storage/README.md).
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 LC_COLLATE 'C'").format(
                sql.Identifier(self.database)))
        self.database_url = _db_url(base, self.database)
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            await migrations.migrate(conn)
        bus = KafkaBus(KafkaConfig(bootstrap=self.kafka, client_id="e2e-admin"))
        t = self.topics
        n = self.partitions
        await bus.create_topics([TopicSpec(t["raw"], n), TopicSpec(t["readings"], n),
                                 TopicSpec(t["dlq"], 2), TopicSpec(t["alerts"], n)])
        for name in STAGES:
            for i in range(self.instances.get(name, 1)):
                self._spawn(name, str(i + 1) if i else "")
        await self._wait_ready()

    @property
    def kafka(self) -> str:
        return os.environ.get("CITYSENSE_KAFKA_BOOTSTRAP") or self.shared["CITYSENSE_KAFKA_BOOTSTRAP"]

    def stage_env(self, name: str, port: int, instance: str = "") -> dict[str, str]:
        t = self.topics
        return {
            **os.environ,
            "CITYSENSE_DATABASE_URL": self.database_url,
            "CITYSENSE_KAFKA_BOOTSTRAP": self.kafka,
            "CITYSENSE_MQTT_URL": self.mqtt_url,
            "CITYSENSE_MQTT_BRIDGE_USERNAME": "citysense-bridge",
            "CITYSENSE_MQTT_BRIDGE_PASSWORD": self.bridge_password,
            "CITYSENSE_TOPIC_RAW": t["raw"], "CITYSENSE_TOPIC_READINGS": t["readings"],
            "CITYSENSE_TOPIC_DLQ": t["dlq"], "CITYSENSE_TOPIC_ALERTS": t["alerts"],
            "CITYSENSE_RAW_PARTITIONS": str(self.partitions),
            "CITYSENSE_READINGS_PARTITIONS": str(self.partitions),
            "CITYSENSE_BRIDGE_SHARE_GROUP": f"bench-{self.run_id}",
            "CITYSENSE_BRIDGE_CLIENT_ID": f"bench-{self.run_id}-bridge{instance}",
            "CITYSENSE_NORMALISE_GROUP": self.groups["normalise"],
            "CITYSENSE_WRITER_GROUP": self.groups["write"],
            "CITYSENSE_METRICS_PORT": str(port),
            **self.extra_env,
        }

    def _spawn(self, name: str, instance: str = "") -> None:
        assert self.broker_dir is not None
        port = free_port()
        key = f"{name}{instance}"
        log = (self.broker_dir / f"{key}.log").open("wb")
        self.procs[key] = subprocess.Popen(
            [sys.executable, "-m", "citysense", name], env=self.stage_env(name, port, instance),
            stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        self.metrics_ports[key] = port

    def log_text(self, key: str) -> str:
        assert self.broker_dir is not None
        return (self.broker_dir / f"{key}.log").read_text(errors="replace")

    async def _wait_ready(self, timeout_s: float = 90.0) -> None:
        """Every stage serves /metrics and the bridge has its subscription."""
        deadline = time.monotonic() + timeout_s
        pending = set(self.procs)
        while pending:
            for key in list(pending):
                proc = self.procs[key]
                if proc.poll() is not None:
                    raise RuntimeError(f"{key} exited ({proc.returncode}):\n{self.log_text(key)[-3000:]}")
                if key.startswith("bridge") and "subscribed to" not in self.log_text(key):
                    continue
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(scrape, self.metrics_ports[key])
                    pending.discard(key)
            if time.monotonic() > deadline:
                raise RuntimeError(f"stages not ready after {timeout_s}s: {sorted(pending)}")
            await asyncio.sleep(0.3)

    def pid(self, key: str) -> int:
        return self.procs[key].pid

    def alive(self) -> list[str]:
        return [k for k, p in self.procs.items() if p.poll() is None]

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for key, proc in self.procs.items():
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                print(f"{key} did not stop in 30 s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        with contextlib.suppress(Exception):
            from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]

            admin = AIOKafkaAdminClient(bootstrap_servers=self.kafka)
            await admin.start()
            try:
                await admin.delete_topics(list(self.topics.values()))
            finally:
                await admin.close()
        if self.database:
            base = os.environ.get("CITYSENSE_DATABASE_URL") or self.shared["CITYSENSE_DATABASE_URL"]
            await drop_database(base, self.database)
        if self.broker_dir is not None:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._broker("down")
            shutil.rmtree(self.broker_dir, ignore_errors=True)
