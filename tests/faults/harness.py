"""The fault suite's tools: stages as child processes, devices that count PUBACKs, exact accounting.

Every stage runs as ``python -m citysense <stage>`` (as the integration crash tests do), so a fault
is a real SIGKILL of a real process. Services are restarted with the ``deploy/local`` scripts, on
whatever ports the environment names (``CITYSENSE_*_PORT``, ``CITYSENSE_STATE_DIR``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from brokers.mqtt import MqttClient, MqttConfig
from citysense.credentials import device_password
from citysense.settings import CommonSettings
from simulators.air import Uplink, air_device_ids
from simulators.runner import interleaved_air_uplinks
from tests.conftest import ROOT, ServiceEnv

UplinkKey = tuple[str, int]  # (device id, seq)
AIR_METRICS = 6


# -- services -------------------------------------------------------------------------------------
def service(name: str, verb: str, *args: str, timeout_s: float = 180,
            env: dict[str, str] | None = None) -> str:
    """``deploy/local/<name>.sh <verb>`` with this process's environment (ports, state directory)."""
    result = subprocess.run(["bash", str(ROOT / f"deploy/local/{name}.sh"), verb, *args],
                            capture_output=True, text=True, timeout=timeout_s, check=False,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise AssertionError(f"{name}.sh {verb} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


# -- stages as child processes ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int, name: str, **labels: str) -> float:
    """One sample from a stage's /metrics (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@dataclass
class StageProcess:
    """One ``citysense <command>`` child; stderr goes to a log file (read on failure)."""

    command: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}\n".encode())
        log.flush()
        self.process = subprocess.Popen([sys.executable, "-m", "citysense", self.command],
                                        env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int | None:
        """SIGTERM (the stage drains and commits), SIGKILL after 30 s."""
        p = self.process
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(timeout=10)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def logged(self, text: str) -> bool:
        return self.log_path.exists() and text in self.log_path.read_text(errors="replace")


def stage_env(env: ServiceEnv, s: CommonSettings, database_url: str, unique: str,
              **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "CITYSENSE_DATABASE_URL": database_url,
        "CITYSENSE_KAFKA_BOOTSTRAP": s.kafka_bootstrap or env.kafka_bootstrap,
        "CITYSENSE_MQTT_URL": env.mqtt_url,
        "CITYSENSE_MQTT_BRIDGE_USERNAME": env.bridge_username,
        "CITYSENSE_MQTT_BRIDGE_PASSWORD": env.bridge_password,
        "CITYSENSE_TOPIC_RAW": s.topic_raw,
        "CITYSENSE_TOPIC_READINGS": s.topic_readings,
        "CITYSENSE_TOPIC_DLQ": s.topic_dlq,
        "CITYSENSE_TOPIC_ALERTS": s.topic_alerts,
        "CITYSENSE_RAW_PARTITIONS": str(s.raw_partitions),
        "CITYSENSE_READINGS_PARTITIONS": str(s.readings_partitions),
        "CITYSENSE_DLQ_PARTITIONS": str(s.dlq_partitions),
        "CITYSENSE_BRIDGE_SHARE_GROUP": f"fault-{unique}",
        "CITYSENSE_BRIDGE_CLIENT_ID": f"fault-bridge-{unique}",  # the same id after a restart
        "CITYSENSE_BRIDGE_SESSION_EXPIRY_S": "600",
        "CITYSENSE_NORMALISE_GROUP": f"fault-{unique}-normalise",
        "CITYSENSE_WRITER_GROUP": f"fault-{unique}-writer",
        **extra,
    }


@dataclass
class Pipeline:
    """Bridge(s), normaliser and writer as child processes."""

    bridges: list[StageProcess]
    normaliser: StageProcess
    writer: StageProcess

    @classmethod
    def build(cls, env: ServiceEnv, s: CommonSettings, database_url: str, unique: str, logs: Path,
              *, bridges: int = 1, bridge_metrics: bool = False, **extra: str) -> Pipeline:
        base = stage_env(env, s, database_url, unique, **extra)
        bridge_procs = []
        for i in range(bridges):
            own = {"CITYSENSE_BRIDGE_CLIENT_ID": f"fault-bridge-{unique}-{i}"}  # own id, own session
            if bridge_metrics:
                own["CITYSENSE_METRICS_PORT"] = str(free_port())
            bridge_procs.append(StageProcess("bridge", {**base, **own}, logs / f"bridge-{i}.log"))
        return cls(bridge_procs, StageProcess("normalise", base, logs / "normaliser.log"),
                   StageProcess("write", base, logs / "writer.log"))

    @property
    def stages(self) -> list[StageProcess]:
        return [*self.bridges, self.normaliser, self.writer]

    async def start(self) -> None:
        for stage in self.stages:
            stage.start()
        for bridge in self.bridges:
            await wait_for(lambda b=bridge: b.logged("subscribed to"), 60, "the bridge's SUBACK",
                           self.stages)

    def stop(self) -> list[int | None]:
        return [stage.stop() for stage in self.stages]

    def diagnostics(self) -> str:
        return "\n".join(f"== {st.log_path.name}\n{st.log_tail(1500)}" for st in self.stages)


async def wait_for(predicate: object, timeout_s: float, what: str,
                   stages: Sequence[StageProcess] = ()) -> float:
    """Poll ``predicate`` (sync or async) until true; returns the seconds it took."""
    started = time.monotonic()
    while True:
        result = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            logs = "\n".join(f"== {st.log_path.name}\n{st.log_tail(1500)}" for st in stages)
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{logs}")
        await asyncio.sleep(0.25)


# -- devices ----------------------------------------------------------------------------------------
def air_plan(devices: int, uplinks_per_device: int, unique: str, seed: int = 5) -> list[Uplink]:
    """Recent (inside retention), minute-spaced uplinks, interleaved across devices."""
    minute = 60 * 10**9
    start_ns = (time.time_ns() // minute - uplinks_per_device - int(unique[:3], 16)) * minute
    return list(interleaved_air_uplinks(air_device_ids(devices), uplinks_per_device, seed, start_ns))


@dataclass
class Devices:
    """One MQTT 5 connection per device; remembers which uplinks the broker acknowledged.

    Like a real at-least-once device, a message whose connection drops is kept by paho and re-sent
    after the reconnect, so every uplink is eventually acknowledged (or the test times out).
    """

    mqtt_url: str
    device_secret: str
    device_ids: Sequence[str]
    acked: set[UplinkKey] = field(default_factory=set)
    failed: int = 0
    published: int = 0

    def __post_init__(self) -> None:
        self._clients = {
            d: MqttClient(MqttConfig(url=self.mqtt_url, username=d,
                                     password=device_password(self.device_secret, d),
                                     client_id=d, reconnect_max_s=2))  # bound to the id by the broker
            for d in self.device_ids
        }

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for c in self._clients.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self._clients.values()))

    async def publish(self, uplinks: Iterable[Uplink], rate: float, window: int = 2000) -> None:
        """Publish at ``rate`` per second, at most ``window`` unacknowledged; wait for every PUBACK."""
        pending: set[asyncio.Future[None]] = set()
        started = time.monotonic()
        for i, u in enumerate(uplinks):
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)
            while len(pending) >= window:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            fut = self._clients[u.device_id].publish(u.topic, u.payload, 1)
            key = (u.device_id, u.batch.readings[0].seq)
            fut.add_done_callback(lambda f, k=key: self._settled(k, f))
            pending.add(fut)
            self.published += 1
        if pending:
            await asyncio.wait(pending)

    def _settled(self, key: UplinkKey, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.failed += 1
        else:
            self.acked.add(key)


# -- accounting -------------------------------------------------------------------------------------
async def stored_uplinks(database_url: str) -> tuple[dict[UplinkKey, int], int, int]:
    """Rows per (device, seq), total rows, and rows beyond one per (device, metric, time)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT device_id, seq, count(*) FROM readings GROUP BY 1, 2")
        per_uplink = {(d, int(q)): int(n) for d, q, n in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT count(*), count(*) - count(DISTINCT (device_id, metric, time)) FROM readings")
        row = await cur.fetchone()
    assert row is not None
    return per_uplink, int(row[0]), int(row[1])


async def all_stored(database_url: str, keys: set[UplinkKey]) -> bool:
    per_uplink, _, _ = await stored_uplinks(database_url)
    return all(per_uplink.get(k, 0) >= AIR_METRICS for k in keys)


async def settle(database_url: str, keys: set[UplinkKey], timeout_s: float = 60) -> float:
    """Seconds until every uplink in ``keys`` is stored; -1 if that did not happen in ``timeout_s``
    (the accounting row then shows what is missing)."""
    try:
        return await wait_for(lambda: all_stored(database_url, keys), timeout_s, "uplinks to be stored")
    except AssertionError:
        return -1.0


async def dead_lettered(bootstrap: str, topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps) if tps else {}
        starts = await consumer.beginning_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    return sum(ends[tp] - starts[tp] for tp in tps)


async def topic_and_group_offsets(bootstrap: str, topic: str, group: str) -> tuple[int, int]:
    """(sum of the topic's end offsets, sum of the group's committed offsets on it)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return sum(ends.values()), sum(m.offset for tp, m in committed.items() if tp.topic == topic)


@dataclass(frozen=True)
class Accounting:
    scenario: str
    published: int
    acknowledged: int
    stored: int        # acknowledged uplinks whose every reading is in the table
    lost: int          # acknowledged, not stored
    duplicates: int    # rows beyond one per uplink reading
    dead_lettered: int
    recovery_s: float  # fault cleared -> everything acknowledged until then stored
    note: str = ""

    def as_row(self) -> dict[str, object]:
        return asdict(self)


async def account(scenario: str, devices: Devices, database_url: str, s: CommonSettings,
                  recovery_s: float) -> Accounting:
    per_uplink, _rows, dup_rows = await stored_uplinks(database_url)
    stored = {k for k, n in per_uplink.items() if n >= AIR_METRICS}
    over = sum(n - AIR_METRICS for n in per_uplink.values() if n > AIR_METRICS)
    assert s.kafka_bootstrap is not None
    return Accounting(
        scenario=scenario,
        published=devices.published,
        acknowledged=len(devices.acked),
        stored=len(devices.acked & stored),
        lost=len(devices.acked - stored),
        duplicates=dup_rows + over,
        dead_lettered=await dead_lettered(s.kafka_bootstrap, s.topic_dlq),
        recovery_s=round(recovery_s, 1),
    )


# -- one scenario ---------------------------------------------------------------------------------
Fault = Callable[[Pipeline], Awaitable[None]]


@dataclass
class Scenario:
    """Devices publish at a steady rate through the whole pipeline; ``fault`` runs ``fault_at_s``
    into the stream and returns once the fault is cleared (service back, stage restarted)."""

    name: str
    env: ServiceEnv
    settings: CommonSettings
    database_url: str
    unique: str
    logs: Path
    devices: int = 40
    uplinks_per_device: int = 150
    rate: float = 400.0
    fault_at_s: float = 4.0
    bridges: int = 1
    bridge_metrics: bool = False
    stage_env: dict[str, str] = field(default_factory=dict)
    pipeline: Pipeline | None = None
    before_stop: Fault | None = None  # e.g. scrape the stages' metrics

    async def run(self, fault: Fault) -> Accounting:
        s = self.settings
        pipeline = self.pipeline = Pipeline.build(self.env, s, self.database_url, self.unique, self.logs,
                                                  bridges=self.bridges, bridge_metrics=self.bridge_metrics,
                                                  **self.stage_env)
        devices = Devices(self.env.mqtt_url, self.env.device_secret, air_device_ids(self.devices))
        minute = 60 * 10**9
        start_ns = (time.time_ns() // minute - self.uplinks_per_device - int(self.unique[:3], 16)) * minute
        plan = interleaved_air_uplinks(air_device_ids(self.devices), self.uplinks_per_device, 5, start_ns)
        try:
            await pipeline.start()
            await devices.start()
            publishing = asyncio.create_task(devices.publish(plan, self.rate))
            await asyncio.sleep(self.fault_at_s)
            assert not publishing.done(), "the stream ended before the fault"
            await fault(pipeline)
            # Recovery: from the fault's end until all that was acknowledged by then is stored.
            recovering = asyncio.create_task(settle(self.database_url, set(devices.acked), 120))
            await asyncio.wait_for(publishing, 300)
            recovery = await recovering
            await settle(self.database_url, devices.acked, 120)
            row = await account(self.name, devices, self.database_url, s, recovery)
            if self.before_stop is not None:
                await self.before_stop(pipeline)
        finally:
            await devices.stop()
            pipeline.stop()
            await forget_sessions(self.env, [b.env["CITYSENSE_BRIDGE_CLIENT_ID"] for b in pipeline.bridges])
        return row


async def forget_sessions(env: ServiceEnv, client_ids: Sequence[str]) -> None:
    """End the bridges' persistent sessions: left alone, each would keep queueing every later
    test's uplinks (its shared subscription matches them) until it expires."""
    for client_id in client_ids:
        client = MqttClient(MqttConfig(url=env.mqtt_url, username=env.bridge_username,
                                       password=env.bridge_password, client_id=client_id,
                                       clean_start=True, session_expiry_s=0))
        try:
            await client.start()
        finally:
            await client.stop()


def assert_exact(row: Accounting, scenario: Scenario) -> None:
    """Every uplink acknowledged, every acknowledged uplink stored once, nothing dead-lettered."""
    logs = scenario.pipeline.diagnostics() if scenario.pipeline else ""
    assert row.acknowledged == row.published, logs
    assert (row.lost, row.duplicates, row.dead_lettered) == (0, 0, 0), logs
    assert row.recovery_s >= 0, logs
