"""The county's devices, for ``citysense up``: the last hour replayed at ``--speed``, then live.

Every device of the ``county`` scenario (渠县: 22 bridges, 1,200 chargers, 37 townships'
NB-IoT stations, air, weather, rain, water, meters) publishes over MQTT on its natural schedule.
A new data directory replays the last ``REPLAY_S`` (65 minutes) ``speed`` times faster than it
happened (at 60: in 66 s, ~1,300 uplinks/s — the county's peak shape); once device time reaches
the wall clock every device reports live, at its natural interval, so the dashboard's "now" is
now. Device time never runs ahead of the wall clock.

Where the replay starts in the scenario is chosen (``new_scenario_start``) so that the
scenario's abnormal deflection (三汇公路大桥, 1 h in) begins ``EVENT_LEAD_S`` into the replay:
its alert depends on nothing but the event, so a bridge incident comes after a few thousand
uplinks, however slowly this machine replays. (Starting at the scenario's beginning, the first
incident waited for the 0.25 h vibration, whose alert needs daytime traffic, or for the
deflection 60 minutes of device time in: 19 s to over 65 s depending on the replay's pace.)
The crack growth (渠江四桥, 2 h in) then begins near the end of the replay and goes on live.

The position in the scenario is kept in ``devices.json`` in the data directory: a second
``up`` resumes where the first stopped (what it missed while stopped, up to ``REPLAY_S``, is
replayed the same way; the scenario's events keep their times). The scenario's fault ratios are
injected, so a few uplinks are dead-lettered. Devices log in as ``citysense-loadgen`` over a
small connection pool (``simulators/load.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from simulators.cat1 import BridgeEvent
from simulators.load import build_streams, time_ordered, with_faults
from simulators.model import NS
from simulators.mqtt_pool import MqttPool, topic_field
from simulators.scenario import CityScenario, load_scenario
from simulators.scenario_registry import city_registry

SCENARIO = "county"
REPLAY_S = 65 * 60
EVENT_LEAD_S = 60  # device time from the replay's start to the abnormal deflection


def county() -> CityScenario:
    sc = load_scenario(SCENARIO)
    assert isinstance(sc, CityScenario)
    return sc


def new_scenario_start(sc: CityScenario, now_ns: int) -> int:
    """Scenario start of a new data directory: its abnormal deflection (the first event whose
    alert does not depend on the time of day) ``EVENT_LEAD_S`` after the replay's start."""
    anchor_h = min(e.start_h for e in sc.events if e.kind == "abnormal_deflection")
    return now_ns - REPLAY_S * NS - int((anchor_h * 3600 - EVENT_LEAD_S) * NS)


def scenario_events(sc: CityScenario, scenario_start_ns: int) -> dict[str, list[BridgeEvent]]:
    events: dict[str, list[BridgeEvent]] = {}
    for e in sc.events:
        begin = scenario_start_ns + int(e.start_h * 3600 * NS)
        events.setdefault(e.bridge, []).append(
            BridgeEvent(e.kind, begin, begin + int(e.duration_h * 3600 * NS), e.magnitude))
    return events


class CountyDevices:
    """Publishes the county until ``stop()``; ``sent``/``acked`` for the status line."""

    name = "devices"

    def __init__(self, pool: MqttPool, *, speed: float, state_file: Path, seed: int | None = None
                 ) -> None:
        self._pool = pool
        self._speed = speed
        self._state_file = state_file
        self._seed = seed
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.device_ns = 0  # device time of the last uplink published
        self.live = False  # device time has reached the wall clock

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

    def _load_state(self, sc: CityScenario, now_ns: int) -> tuple[int, int]:
        """(scenario start, device time to resume from)."""
        if self._state_file.is_file():
            state = json.loads(self._state_file.read_text())
            start, position = int(state["scenario_start_ns"]), int(state["device_ns"])
        else:
            start, position = new_scenario_start(sc, now_ns), now_ns - REPLAY_S * NS
        return start, min(now_ns, max(position, now_ns - REPLAY_S * NS))

    def _save_state(self, scenario_start_ns: int) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"scenario": SCENARIO, "scenario_start_ns": scenario_start_ns,
                                   "device_ns": self.device_ns}))
        tmp.replace(self._state_file)

    async def _run(self) -> None:
        sc = county()
        seed = sc.seed if self._seed is None else self._seed
        wall0 = time.time_ns()
        scenario_start, device0 = self._load_state(sc, wall0)
        self.device_ns = device0
        self._save_state(scenario_start)
        streams = build_streams(city_registry(sc).devices, seed=seed, start_ns=device0,
                                events=dict(scenario_events(sc, scenario_start)))
        uplinks, _ = with_faults(time_ordered(streams), sc.faults.as_dict(), seed)
        pool, speed = self._pool, self._speed
        route: dict[str, tuple[int, bytes]] = {}
        stop: Callable[[], bool] = self._stopping.is_set
        pending = next(uplinks)
        last_save = time.monotonic()

        def due_ns(device_ns: int) -> int:  # compressed while behind, never before its device time
            return max(wall0 + int((device_ns - device0) / speed), device_ns)

        try:
            while not stop():
                now = time.time_ns()
                sent = 0
                while due_ns(pending.time_ns) <= now and sent < 2000:
                    hit = route.get(pending.device_id)
                    if hit is None:
                        hit = route[pending.device_id] = (
                            zlib.crc32(pending.device_id.encode()) % pool.size, topic_field(pending.topic))
                    if pending.reconnect:
                        await pool.reconnect(hit[0])
                    if not pool.publish_nowait(hit[0], hit[1], pending.payload, 1):
                        await pool.publish(hit[0], hit[1], pending.payload, 1)
                    self.device_ns = max(self.device_ns, pending.time_ns)
                    sent += 1
                    pending = next(uplinks)
                self.published += sent
                self.live = self.live or pending.time_ns >= now
                pool.flush()
                if time.monotonic() - last_save > 5:
                    self._save_state(scenario_start)
                    last_save = time.monotonic()
                wait_s = (due_ns(pending.time_ns) - time.time_ns()) / NS
                if wait_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=min(0.1, wait_s))
                else:
                    await asyncio.sleep(0)
        finally:
            self._save_state(scenario_start)
