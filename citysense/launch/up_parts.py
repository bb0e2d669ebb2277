"""The three parts ``citysense up`` embeds unless given a URL: database, MQTT broker, bus.

Each ``*_part`` returns the address to use and a component that starts and
stops the embedded server (``None`` when the URL points at a real service).
Every check that can refuse to start runs before anything is written.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from pathlib import Path

import psycopg

from brokers.base import Bus
from citysense.broker_auth import find_dynsec_plugin
from citysense.exceptions import ConfigurationError
from citysense.launch.components import CallbackComponent
from citysense.launch.embedded_broker import EmbeddedBroker
from citysense.launch.embedded_mqtt import EmbeddedMosquitto, find_mosquitto, require_dynsec_plugin
from citysense.launch.embedded_postgres import EmbeddedPostgres
from citysense.launch.up_settings import SessionSecrets, UpSettings
from storage import migrations


def require_port_free(port: int, what: str, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # as the servers do: connections in TIME_WAIT from a previous run do not block a listener
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise ConfigurationError(
                f"port {port} ({what}) is already in use on 127.0.0.1: stop the program using it "
                f"(`ss -ltnp 'sport = :{port}'` shows it) or choose another port with {option}"
            ) from None


def check_ports(settings: UpSettings) -> None:
    """Every port an embedded part will listen on is free (checked before anything is written)."""
    if settings.database_url is None:
        require_port_free(settings.up_pg_port, "embedded PostgreSQL", "--pg-port / CITYSENSE_UP_PG_PORT")
    if settings.mqtt_url is None:
        require_port_free(settings.up_mqtt_port, "embedded MQTT broker",
                          "--mqtt-port / CITYSENSE_UP_MQTT_PORT")
    require_port_free(settings.up_api_port, "API and dashboard", "--api-port / CITYSENSE_UP_API_PORT")


def stop_orphans(settings: UpSettings) -> list[str]:
    """Servers a killed ``up`` left running on this data directory (the caller holds its lock)."""
    stopped = []
    pg = embedded_postgres(settings)
    if settings.database_url is None and pg.running():
        pg.stop()
        stopped.append("PostgreSQL")
    executable = find_mosquitto()
    broker_dir = settings.up_data_dir / "mosquitto"
    if executable and EmbeddedMosquitto(broker_dir, settings.up_mqtt_port, executable).stop_orphan():
        stopped.append("Mosquitto")
    if EmbeddedBroker(settings.up_data_dir / "mqtt-broker", settings.up_mqtt_port).stop_orphan():
        stopped.append("the MQTT broker")
    return stopped


def choose_broker(settings: UpSettings) -> EmbeddedMosquitto | EmbeddedBroker:
    """Mosquitto with its dynamic-security plugin when installed (or asked for), else the
    project's own broker (a Mosquitto without the plugin would not check SUBSCRIBE)."""
    if settings.up_broker == "mosquitto":
        executable = find_mosquitto()
        if executable is None:
            raise ConfigurationError(
                "--broker mosquitto: no Mosquitto binary found: install it (apt-get install "
                "mosquitto), or use --broker auto / citysense")
        require_dynsec_plugin()
        return EmbeddedMosquitto(settings.up_data_dir / "mosquitto", settings.up_mqtt_port, executable)
    executable = find_mosquitto() if settings.up_broker == "auto" else None
    if executable is not None and find_dynsec_plugin() is not None:
        return EmbeddedMosquitto(settings.up_data_dir / "mosquitto", settings.up_mqtt_port, executable)
    return EmbeddedBroker(settings.up_data_dir / "mqtt-broker", settings.up_mqtt_port)


def embedded_postgres(settings: UpSettings) -> EmbeddedPostgres:
    return EmbeddedPostgres(settings.up_data_dir / "postgres", settings.up_pg_port)


def database_part(settings: UpSettings) -> tuple[str, CallbackComponent | None]:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value(), None
    pg = embedded_postgres(settings)
    pg.init()
    pg.check_version()

    async def start() -> None:
        from storage.admin import ensure_database

        await asyncio.to_thread(pg.start)
        await ensure_database(pg.admin_url(), pg.database)

    async def stop() -> None:
        await asyncio.to_thread(pg.stop)

    return pg.url(), CallbackComponent("postgres", start, stop)


async def check_schema(url: str, where: str) -> None:
    """Refuse a database written by a newer citysense (before migrating anything)."""
    newest = max(m.version for m in migrations.MIGRATIONS)
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            have = await migrations.current_version(conn)
    except psycopg.OperationalError as exc:
        raise ConfigurationError(f"cannot connect to the database ({where}): {exc}".strip()) from None
    if have > newest:
        raise ConfigurationError(
            f"the database ({where}) has schema version {have}, newer than this citysense knows "
            f"({newest}): upgrade citysense (git pull && make install), or use another data "
            "directory (--data-dir / CITYSENSE_UP_DATA_DIR); nothing was changed")


def mqtt_part(settings: UpSettings, secrets: SessionSecrets
              ) -> tuple[str, tuple[str, str], tuple[str, str], CallbackComponent | None]:
    """(url, bridge login, loadgen login, embedded broker component)."""
    if settings.mqtt_url is not None:
        def login(user: str, password: object) -> tuple[str, str]:
            value = getattr(password, "get_secret_value", lambda: None)()
            if not value:
                raise ConfigurationError(
                    f"CITYSENSE_MQTT_URL is set but the password of {user!r} is not: export "
                    "CITYSENSE_MQTT_BRIDGE_PASSWORD (and CITYSENSE_MQTT_LOADGEN_PASSWORD if the "
                    "load generator has its own)")
            return user, value
        bridge = login(settings.mqtt_bridge_username, settings.mqtt_bridge_password)
        loadgen = login(settings.mqtt_loadgen_username,
                        settings.mqtt_loadgen_password or settings.mqtt_bridge_password)
        return settings.mqtt_url, bridge, loadgen, None
    broker = choose_broker(settings)  # refused here, before the database is touched
    bridge = ("citysense-bridge", secrets.bridge_password)
    loadgen = ("citysense-loadgen", secrets.loadgen_password)

    async def start() -> None:
        from simulators.scenario_registry import credential_hash, export_scenario

        devices = [(d["device_id"], d["kind"]) for d in export_scenario("county", None)["devices"]]
        creds = [(i, kind, credential_hash(secrets.device_secret, i)) for i, kind in devices]
        await asyncio.to_thread(broker.configure, dict([bridge, loadgen]), creds)
        await asyncio.to_thread(broker.start)

    async def stop() -> None:
        await asyncio.to_thread(broker.stop)

    name = "mosquitto" if isinstance(broker, EmbeddedMosquitto) else "mqtt-broker"
    return broker.url, bridge, loadgen, CallbackComponent(name, start, stop)


async def check_mqtt_logins(url: str, logins: list[tuple[str, str]]) -> None:
    """Log in once with each account before anything is stored: a refusal names the fix."""
    import uuid

    from brokers.exceptions import BrokerError, BrokerUnavailableError
    from brokers.mqtt import MqttClient, MqttConfig

    for user, password in logins:
        client = MqttClient(MqttConfig(url=url, username=user, password=password,
                                       client_id=f"citysense-up-check-{uuid.uuid4().hex[:8]}"))
        try:
            await client.start()
        except BrokerUnavailableError as exc:
            raise ConfigurationError(
                f"cannot reach the MQTT broker at {url} ({exc}): start it, or fix "
                "CITYSENSE_MQTT_URL (unset it to use an embedded Mosquitto)") from None
        except BrokerError as exc:
            raise ConfigurationError(
                f"the MQTT broker at {url} refused the login of {user!r} ({exc}): set "
                "CITYSENSE_MQTT_BRIDGE_USERNAME/CITYSENSE_MQTT_BRIDGE_PASSWORD (and "
                "CITYSENSE_MQTT_LOADGEN_USERNAME/..._PASSWORD) to accounts the broker accepts; "
                "nothing was changed") from None
        finally:
            await client.stop()


def bus_part(settings: UpSettings) -> Bus:
    if settings.kafka_bootstrap:
        from brokers.kafka import KafkaBus, kafka_config

        return KafkaBus(kafka_config(settings, "citysense-up"))
    from brokers.memory import MemoryBus

    return MemoryBus()


def registry_file(data_dir: Path, device_secret: str) -> Path:
    """The county's registry (sites, devices, credential hashes) for the normaliser and import.

    Written at every start (it is deterministic for the secret), so a data directory made by an
    older citysense gets the devices' current profiles, e.g. a charger's heartbeat interval."""
    import json

    from simulators.scenario_registry import export_scenario

    path = data_dir / "registry.json"
    text = json.dumps(export_scenario("county", device_secret), ensure_ascii=False)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path
