"""The ``citysense`` command: one entry point for every deployable and tool."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from alerts.cli import alerts_app, rules_app
from api.cli import api_command, apikey_app
from citysense.launch.offsets import offsets_app
from citysense.logs import install as install_log_rate_limit
from citysense.settings import PROJECT_ROOT, CommonSettings, load_settings
from ingest.dlq.cli import dlq_app

app = typer.Typer(help="citysense: city-scale IoT sensing ingestion.", no_args_is_help=True)
services_app = typer.Typer(help="Local Kafka, PostgreSQL and Mosquitto (deploy/local).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(services_app, name="services")
app.add_typer(db_app, name="db")
app.add_typer(topics_app, name="topics")
devices_app = typer.Typer(help="Device registry.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
scenario_app = typer.Typer(help="Simulator scenarios (simulators/scenarios/*.yaml).", no_args_is_help=True)
app.add_typer(scenario_app, name="scenario")
app.add_typer(dlq_app, name="dlq")
app.add_typer(rules_app, name="rules"); app.add_typer(alerts_app, name="alerts")  # noqa: E702
app.add_typer(offsets_app, name="offsets")
app.add_typer(apikey_app, name="apikey")
app.command("api")(api_command)

SERVICES_SCRIPT = PROJECT_ROOT / "deploy" / "local" / "services.sh"


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    install_log_rate_limit()  # a Kafka outage must not log thousands of lines a second


def _services(verb: str, names: list[str] | None) -> None:
    result = subprocess.run(["bash", str(SERVICES_SCRIPT), verb, *(names or [])], check=False)
    raise typer.Exit(result.returncode)


@services_app.command("up")
def services_up(names: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Install (if needed) and start the services; a no-op when already up."""
    _services("up", names)


@services_app.command("down")
def services_down(names: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """Stop the services (idempotent)."""
    _services("down", names)


@services_app.command("status")
def services_status(names: Annotated[list[str] | None, typer.Argument()] = None) -> None:
    """One line per service; exit 0 only when all are up."""
    _services("status", names)


@topics_app.command("create")
def topics_create() -> None:
    """Create the pipeline's topics with partition counts from settings (idempotent)."""
    from citysense.launch.runners import create_topics

    _logging()
    asyncio.run(create_topics(load_settings(CommonSettings)))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending schema migrations (idempotent)."""
    from citysense.launch.runners import migrate_db

    _logging()
    applied = asyncio.run(migrate_db(load_settings(CommonSettings)))
    typer.echo(f"applied migrations {applied}" if applied else "schema is up to date")


def _database_url(settings: CommonSettings) -> str:
    if settings.database_url is None:
        typer.echo("CITYSENSE_DATABASE_URL is not set (run `citysense services up` or export it)", err=True)
        raise typer.Exit(2)
    return settings.database_url.get_secret_value()


@db_app.command("maintain")
def db_maintain() -> None:
    """Partitions ahead, retention, TimescaleDB policies from settings (idempotent)."""
    from storage.admin import maintain
    from storage.exceptions import StorageError
    from storage.settings import StorageSettings

    _logging()
    settings = load_settings(StorageSettings)
    try:
        report = asyncio.run(maintain(_database_url(settings), settings))
    except StorageError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(report.summary())


@devices_app.command("import")
def devices_import(
    file: Annotated[str, typer.Argument(help="registry JSON (`citysense scenario export`), or - for stdin")],
) -> None:
    """Import (upsert) sites and devices from a scenario's exported registry."""
    from pathlib import Path

    from pydantic import ValidationError

    from storage.admin import import_devices
    from storage.exceptions import StorageError
    from storage.settings import StorageSettings

    _logging()
    url = _database_url(load_settings(StorageSettings))
    text = sys.stdin.read() if file == "-" else Path(file).read_text()
    try:
        sites, devices = asyncio.run(import_devices(url, text))
    except ValidationError as exc:
        typer.echo(f"invalid registry: {exc}", err=True)
        raise typer.Exit(2) from None
    except StorageError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"imported {sites} sites and {devices} devices")


@app.command()
def bridge(verbose: bool = False) -> None:
    """Run the MQTT -> Kafka raw-topic bridge."""
    from citysense.launch.runners import run_bridge
    from ingest.settings import BridgeSettings

    _logging(verbose)
    asyncio.run(run_bridge(load_settings(BridgeSettings)))


@app.command()
def normalise(verbose: bool = False) -> None:
    """Run the normaliser (raw topic -> readings topic + dead letters)."""
    from citysense.launch.runners import run_normaliser
    from ingest.settings import NormaliserSettings

    _logging(verbose)
    asyncio.run(run_normaliser(load_settings(NormaliserSettings)))


@app.command()
def write(verbose: bool = False) -> None:
    """Run the storage writer (readings topic -> database)."""
    from citysense.launch.runners import run_writer
    from storage.settings import WriterSettings

    _logging(verbose)
    asyncio.run(run_writer(load_settings(WriterSettings)))


@app.command()
def simulate(
    devices: Annotated[int | None, typer.Option(
        help="air fleet: devices air-0000..; with --scenario/--duration: device count")] = None,
    uplinks: Annotated[int, typer.Option(help="air fleet: uplinks per device")] = 10,
    rate: Annotated[float | None, typer.Option(help="uplinks per second, all devices")] = None,
    qos: Annotated[int | None, typer.Option(help="0 or 1 (default: 1; scale scenario: its own)")] = None,
    seed: Annotated[int | None, typer.Option(help="default: 0, or the scenario's seed")] = None,
    scenario: Annotated[str | None, typer.Option(help="county, scale or a YAML path")] = None,
    duration: Annotated[float | None, typer.Option(help="seconds; turns on load mode (pooled)")] = None,
    connections: Annotated[int | None, typer.Option(help="MQTT connection pool size")] = None,
    faults: Annotated[bool, typer.Option(help="inject the scenario's fault ratios")] = True,
    topic_root: Annotated[str | None, typer.Option(
        help="publish under ROOT/{kind}/{id}/up instead of devices/... (keeps bridges out)")] = None,
) -> None:
    """Publish simulated uplinks over MQTT.

    Without --scenario/--duration: LTE-Cat1 air-quality devices, one connection per
    device (each logs in as itself). With --scenario (default scale when only
    --duration is given): the scenario's devices multiplexed over a pool of
    connections logged in as citysense-loadgen, at --rate for --duration seconds.
    """
    from simulators.settings import SimulatorSettings

    _logging()
    settings = load_settings(SimulatorSettings)
    if scenario is None and duration is None:
        from simulators.runner import run_air_fleet

        stats = asyncio.run(
            run_air_fleet(settings, devices=devices or 10, uplinks=uplinks, rate=rate or 100.0,
                          qos=1 if qos is None else qos, seed=seed or 0, progress=True)
        )
        typer.echo(f"sent={stats.sent} acked={stats.acked} errors={stats.errors}")
        if stats.errors:
            raise typer.Exit(1)
        return
    from simulators.runner import run_scenario

    result = asyncio.run(run_scenario(
        settings, scenario or "scale", devices=devices, rate=rate, duration_s=duration, qos=qos,
        seed=seed, connections=connections, faults=faults, topic_root=topic_root, progress=True,
    ))
    typer.echo(f"sent={result.sent} acked={result.acked} errors={result.errors} "
               f"rate={result.rate:.0f}/s faults={result.faults}")
    if result.errors:
        raise typer.Exit(1)


@scenario_app.command("export")
def scenario_export(
    name: Annotated[str, typer.Argument(help="county or a city scenario YAML path")] = "county",
    credentials: Annotated[
        bool, typer.Option(help="include credential_hash (needs the device secret)")
    ] = True,
) -> None:
    """Print the scenario's device registry (sites and devices) as JSON."""
    import json

    from simulators.scenario_registry import export_scenario
    from simulators.settings import SimulatorSettings

    secret = load_settings(SimulatorSettings).device_secret if credentials else None
    data = export_scenario(name, secret.get_secret_value() if secret else None)
    typer.echo(json.dumps(data, ensure_ascii=False, indent=1))


@scenario_app.command("ids")
def scenario_ids(name: Annotated[str, typer.Argument()] = "county") -> None:
    """Print the scenario's devices, '<kind> <id>' a line (the broker's devices.txt format)."""
    from simulators.scenario_registry import export_scenario

    for device in export_scenario(name, None)["devices"]:
        typer.echo(f"{device['kind']} {device['device_id']}")


@app.command()
def demo(devices: int = 20, rate: float = 50.0) -> None:
    """Start the services and the whole pipeline with a live simulator; Ctrl-C stops cleanly."""
    from citysense.launch.demo import run_demo

    _logging()
    if subprocess.run(["bash", str(SERVICES_SCRIPT), "up"], check=False).returncode != 0:
        raise typer.Exit(1)
    started = time.monotonic()
    asyncio.run(run_demo(devices=devices, rate=rate))
    typer.echo(f"demo stopped cleanly after {time.monotonic() - started:.0f}s")


@app.command()
def up(
    speed: Annotated[float | None, typer.Option(
        help="replay speed of the scenario's last hour, then live (default 60)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="state (default .citysense-data)")] = None,
    pg_port: Annotated[int | None, typer.Option(help="embedded PostgreSQL port (default 15432)")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="embedded MQTT broker port (default 11883)")] = None,
    broker: Annotated[str | None, typer.Option(
        help="embedded MQTT broker: auto (Mosquitto if installed, else citysense's own), "
             "mosquitto or citysense")] = None,
    api_port: Annotated[int | None, typer.Option(help="API and dashboard port (default 8000)")] = None,
    verbose: bool = False,
) -> None:
    """The whole platform on this machine (embedded PostgreSQL, MQTT broker, in-memory bus) with
    the county's devices live; each part uses the real service when its URL is set."""
    from citysense.exceptions import ConfigurationError
    from citysense.launch.up import run_up
    from citysense.launch.up_settings import UpSettings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given: dict[str, Any] = {"up_speed": speed, "up_data_dir": data_dir, "up_pg_port": pg_port,
             "up_mqtt_port": mqtt_port, "up_api_port": api_port, "up_broker": broker}
    try:
        settings = UpSettings(**{k: v for k, v in given.items() if v is not None})
        asyncio.run(run_up(settings))
    except ConfigurationError as exc:
        typer.echo(f"citysense up: {exc}", err=True)
        raise typer.Exit(2) from None


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
