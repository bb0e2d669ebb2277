"""The county's devices, live, for ``citysense up``.

Every device of the ``county`` scenario (渠县: 22 bridges, 1,200 chargers,
37 townships' NB-IoT stations, air, weather, rain, water, meters) publishes
over MQTT when its device time comes, so device time is wall-clock time and
the dashboard's "last hour" shows what was just sent. ``speed`` shortens the
report interval of every sensor (Cat1 and NB-IoT) and the scenario's event
timeline by that factor: at 60 a bridge reports every second and the
scenario's first bridge event (vibration at 0.25 h) starts 15 s after launch.
Chargers keep their natural OCPP behaviour (sessions, 60 s meter values,
heartbeats): their schedule is made of real durations the model has no
knob for. The scenario's fault ratios are injected (dead letters are part
of the picture). Devices log in as ``citysense-loadgen`` over a small
connection pool (see ``simulators/load.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from collections.abc import Callable, Sequence

from ingest.profiles import PROFILES
from simulators.cat1 import BridgeEvent, Cat1Device
from simulators.charger import ChargerDevice
from simulators.load import time_ordered, with_faults
from simulators.model import NS, DeviceStream
from simulators.mqtt_pool import MqttPool, topic_field
from simulators.nbiot import NbiotDevice
from simulators.scenario import CityScenario, load_scenario
from simulators.scenario_registry import DeviceSpec, city_registry

SCENARIO = "county"


def county() -> CityScenario:
    sc = load_scenario(SCENARIO)
    assert isinstance(sc, CityScenario)
    return sc


def scaled_streams(sc: CityScenario, specs: Sequence[DeviceSpec], *, speed: float, start_ns: int,
                   seed: int) -> list[DeviceStream]:
    rng = random.Random(seed)
    events: dict[str, list[BridgeEvent]] = {}
    for e in sc.events:
        begin = start_ns + int(e.start_h * 3600 / speed * NS)
        events.setdefault(e.bridge, []).append(
            BridgeEvent(e.kind, begin, begin + int(e.duration_h * 3600 / speed * NS), e.magnitude))
    streams: list[DeviceStream] = []
    for d in specs:
        profile = PROFILES[d.kind]
        if d.kind == "charger":
            streams.append(ChargerDevice(d.device_id, rng, start_ns=start_ns, dc=d.metadata.get(
                "current") == "DC", power_kw=float(d.metadata.get("power_kw", 7.0))))
            continue
        interval_s = max(1, round(profile.report_interval_s / speed))  # NB-IoT: whole seconds
        phase = int(rng.uniform(0, interval_s) * NS)
        if profile.network == "nb-iot":
            streams.append(NbiotDevice(d.device_id, profile, rng, start_ns=start_ns + phase,
                                       interval_ns=interval_s * NS))
        else:
            streams.append(Cat1Device(
                d.device_id, profile, rng, start_ns=start_ns + phase, interval_ns=interval_s * NS,
                events=events.get(str(d.metadata.get("bridge", "")), ())))
    return streams


class CountyDevices:
    """Publishes the county until ``stop()``; ``sent``/``acked`` for the status line."""

    name = "devices"

    def __init__(self, pool: MqttPool, *, speed: float, seed: int | None = None) -> None:
        self._pool = pool
        self._speed = speed
        self._seed = seed
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    @property
    def acked(self) -> int:
        return self._pool.stats.acked

    async def start(self) -> None:
        await self._pool.start()
        self._task = asyncio.create_task(self._run(), name="devices")

    def failed(self) -> BaseException | None:
        t = self._task
        return t.exception() if t is not None and t.done() and not t.cancelled() else None

    async def stop(self) -> None:
        """Stop publishing, wait for the broker's PUBACKs of everything sent, close."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self._pool.drain(timeout_s=15.0)
        await self._pool.stop()

    async def _run(self) -> None:
        sc = county()
        seed = sc.seed if self._seed is None else self._seed
        start_ns = time.time_ns()
        streams = scaled_streams(sc, city_registry(sc).devices, speed=self._speed,
                                 start_ns=start_ns, seed=seed)
        uplinks, _ = with_faults(time_ordered(streams), sc.faults.as_dict(), seed)
        pool = self._pool
        route: dict[str, tuple[int, bytes]] = {}
        stop: Callable[[], bool] = self._stopping.is_set
        pending = next(uplinks)
        while not stop():
            now = time.time_ns()
            sent = 0
            while pending.time_ns <= now and sent < 2000:
                hit = route.get(pending.device_id)
                if hit is None:
                    hit = route[pending.device_id] = (
                        zlib.crc32(pending.device_id.encode()) % pool.size, topic_field(pending.topic))
                if pending.reconnect:
                    await pool.reconnect(hit[0])
                if not pool.publish_nowait(hit[0], hit[1], pending.payload, 1):
                    await pool.publish(hit[0], hit[1], pending.payload, 1)
                sent += 1
                pending = next(uplinks)
            self.published += sent
            pool.flush()
            wait_s = (pending.time_ns - time.time_ns()) / NS
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=min(0.1, wait_s))
            else:
                await asyncio.sleep(0)
