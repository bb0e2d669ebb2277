"""Run simulated fleets from settings (used by ``citysense simulate`` and the demo)."""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from citysense.exceptions import ConfigurationError
from ingest.profiles import PROFILES
from simulators.air import Uplink, air_device_ids, air_uplinks
from simulators.cat1 import BridgeEvent
from simulators.fleet import Fleet, FleetStats
from simulators.load import LoadResult, build_streams, round_robin, run_load, time_ordered, with_faults
from simulators.model import NS
from simulators.mqtt_pool import MqttPool
from simulators.scenario import CityScenario, ScaleScenario, load_scenario
from simulators.scenario_registry import city_registry, scale_devices
from simulators.settings import SimulatorSettings


def interleaved_air_uplinks(
    device_ids: list[str], uplinks: int, seed: int, start_ns: int, interval_ns: int = 60 * 10**9
) -> Iterator[Uplink]:
    """Round-robin over devices, so every device reports about once per round (lazily)."""
    streams = [air_uplinks(d, uplinks, start_ns=start_ns, interval_ns=interval_ns, seed=seed)
               for d in device_ids]
    for _ in range(uplinks):
        for stream in streams:
            yield next(stream)


async def run_air_fleet(
    settings: SimulatorSettings, *, devices: int, uplinks: int, rate: float, qos: int, seed: int,
    progress: bool = False, stop: Callable[[], bool] = lambda: False, live: bool = False,
    fleet_ready: Callable[[Fleet], None] | None = None,
) -> FleetStats:
    """Publish ``uplinks`` per device; ``live`` stamps them from now on at the real pace."""
    if not settings.mqtt_url or settings.device_secret is None:
        raise ConfigurationError("CITYSENSE_MQTT_URL and CITYSENSE_DEVICE_SECRET must be set")
    ids = air_device_ids(devices)
    if live:
        interval_ns = int(devices / rate * 1e9)
        start_ns = time.time_ns()
    else:  # a past, minute-aligned history: reproducible rows for tests
        interval_ns = 60 * 10**9
        start_ns = (time.time_ns() // interval_ns) * interval_ns - uplinks * interval_ns
    plan = interleaved_air_uplinks(ids, uplinks, seed, start_ns, interval_ns)
    fleet = Fleet(settings.mqtt_url, settings.device_secret.get_secret_value(), ids)
    await fleet.start()
    if fleet_ready:
        fleet_ready(fleet)
    reporter = asyncio.create_task(_report(fleet)) if progress else None
    try:
        return await fleet.publish_all(plan, qos=qos, rate=rate, stop=stop)
    finally:
        if reporter:
            reporter.cancel()
        await fleet.stop()


def loadgen_pool(settings: SimulatorSettings, connections: int | None = None) -> MqttPool:
    if not settings.mqtt_url or settings.mqtt_loadgen_password is None:
        raise ConfigurationError(
            "CITYSENSE_MQTT_URL and CITYSENSE_MQTT_LOADGEN_PASSWORD must be set")
    parts = urlsplit(settings.mqtt_url)
    return MqttPool(
        parts.hostname or "127.0.0.1", parts.port or 1883, username=settings.mqtt_loadgen_username,
        password=settings.mqtt_loadgen_password.get_secret_value(),
        size=connections or settings.sim_connections,
    )


async def run_scenario(
    settings: SimulatorSettings, scenario_name: str, *, devices: int | None = None,
    rate: float | None = None, duration_s: float | None = None, qos: int | None = None,
    seed: int | None = None, connections: int | None = None, faults: bool = True,
    topic_root: str | None = None, progress: bool = False, stop: Callable[[], bool] = lambda: False,
) -> LoadResult:
    """Publish a scenario's devices over a pooled connection (user citysense-loadgen).

    A city scenario replays its devices merged by device time, compressed to
    ``rate`` and ending about now; a scale scenario sends every device once per
    round. Either stops after ``duration_s``.
    """
    sc = load_scenario(scenario_name)
    seed = sc.seed if seed is None else seed
    now = time.time_ns()
    if isinstance(sc, CityScenario):
        registry = city_registry(sc)
        specs = list(registry.devices[:devices] if devices else registry.devices)
        natural = sum(1 / PROFILES[d.kind].report_interval_s for d in specs)
        rate = rate or max(1.0, natural)
        duration_s = duration_s or 60.0
        span_s = duration_s * rate / natural  # simulated seconds the run covers
        start = now - int(span_s) * NS
        events: dict[str, list[BridgeEvent]] = {}
        for e in sc.events:
            begin = start + int(e.start_h * 3600) * NS
            events.setdefault(e.bridge, []).append(
                BridgeEvent(e.kind, begin, begin + int(e.duration_h * 3600) * NS, e.magnitude))
        streams = build_streams(specs, seed=seed, start_ns=start, events=dict(events))
        uplinks = time_ordered(streams)
        qos = 1 if qos is None else qos
    else:
        assert isinstance(sc, ScaleScenario)
        specs = scale_devices(sc, devices)
        rate = rate or sc.rate
        duration_s = duration_s or sc.duration_s
        rounds = math.ceil(rate * duration_s / len(specs))
        streams = build_streams(specs, seed=seed, start_ns=now, back_intervals=rounds)
        uplinks = round_robin(streams)
        qos = sc.qos if qos is None else qos
    injector = None
    if faults:
        uplinks, injector = with_faults(uplinks, sc.faults.as_dict(), seed)
    pool = loadgen_pool(settings, connections)
    await pool.start()
    try:
        return await run_load(pool, uplinks, rate=rate, duration_s=duration_s, qos=qos,
                              topic_root=topic_root, progress=progress, stop=stop, injector=injector)
    finally:
        await pool.stop()


async def _report(fleet: Fleet) -> None:
    last, t0 = 0, time.monotonic()
    while True:
        await asyncio.sleep(1)
        s = fleet.stats
        sys.stderr.write(f"\rsent={s.sent} acked={s.acked} errors={s.errors} rate={s.acked - last}/s "
                         f"t={time.monotonic() - t0:.0f}s   ")
        sys.stderr.flush()
        last = s.acked
