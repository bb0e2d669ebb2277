"""Drive many simulated devices through a bounded MQTT connection pool at a target rate.

Devices (``DeviceSpec``) become device models sharing one seeded
``random.Random``; :func:`round_robin` asks each device for its next uplink
in a fixed order (every device reports once per round: the load shape), and
:func:`time_ordered` merges their streams by device time (the city shape).
Faults are injected on the way. :func:`run_load` paces the stream at
``rate`` uplinks/s for at most ``duration_s`` seconds and ``max_messages``
messages, prints a live progress line, and stops by itself.

Every connection logs in as ``citysense-loadgen``, which the broker's ACL
lets write ``devices/#`` (a device's own login may write only its own
topic): that is what lets one process speak for 100,000 devices over a few
connections.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

from ingest.profiles import PROFILES
from simulators.cat1 import BridgeEvent, Cat1Device
from simulators.charger import ChargerDevice
from simulators.faults import FaultInjector, inject
from simulators.model import NS, DeviceStream, Uplink
from simulators.mqtt_pool import MqttPool, topic_field
from simulators.nbiot import NbiotDevice
from simulators.scenario_registry import DeviceSpec


def build_streams(
    devices: Sequence[DeviceSpec], *, seed: int, start_ns: int,
    events: dict[str, Sequence[BridgeEvent]] | None = None, back_intervals: int = 0,
) -> list[DeviceStream]:
    """One device model per spec, first uplink at a seeded phase within its interval.

    ``back_intervals`` starts each device that many of its report intervals
    before ``start_ns``, so a replay of that many rounds ends around ``start_ns``.
    """
    rng = random.Random(seed)
    events = events or {}
    streams: list[DeviceStream] = []
    for d in devices:
        profile = PROFILES[d.kind]
        phase = int(rng.uniform(0, profile.report_interval_s)) * NS
        phase -= int(back_intervals * profile.report_interval_s) * NS
        if d.kind == "charger":
            streams.append(ChargerDevice(
                d.device_id, rng, start_ns=start_ns + phase,
                power_kw=float(d.metadata.get("power_kw", 7.0)), dc=d.metadata.get("current") == "DC",
            ))
        elif profile.network == "nb-iot":
            streams.append(NbiotDevice(d.device_id, profile, rng, start_ns=start_ns + phase))
        else:
            bridge_events = events.get(str(d.metadata.get("bridge", "")), ())
            streams.append(Cat1Device(d.device_id, profile, rng, start_ns=start_ns + phase,
                                      events=bridge_events))
    return streams


def round_robin(streams: Sequence[DeviceStream]) -> Iterator[Uplink]:
    take = DeviceStream.take
    if any(type(s).take is not take for s in streams):
        while True:
            for s in streams:
                yield s.take()
    while True:  # DeviceStream.take, inlined: the load generator's hottest loop
        for s in streams:
            pending = s._pending
            if pending is None:
                yield next(s._gen)
            else:
                s._pending = None
                yield pending


def time_ordered(streams: Sequence[DeviceStream]) -> Iterator[Uplink]:
    heap = [(s.next_ns, i) for i, s in enumerate(streams)]
    heapq.heapify(heap)
    while heap:
        _, i = heap[0]
        uplink = streams[i].take()
        heapq.heapreplace(heap, (streams[i].next_ns, i))
        yield uplink


def with_faults(uplinks: Iterable[Uplink], ratios: dict[str, float], seed: int
                ) -> tuple[Iterator[Uplink], FaultInjector]:
    injector = FaultInjector(ratios, seed)
    return inject(uplinks, injector), injector


@dataclass
class LoadResult:
    qos: int
    connections: int
    sent: int = 0
    acked: int = 0
    errors: int = 0
    reconnects: int = 0
    elapsed_s: float = 0.0
    latencies_ns: list[int] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s else 0.0

    def percentile_ms(self, p: float) -> float | None:
        if not self.latencies_ns:
            return None
        ordered = sorted(self.latencies_ns)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] / 1e6


class _Route:
    """device id -> (connection index, encoded topic), cached."""

    def __init__(self, size: int, topic_root: str | None) -> None:
        self._size = size
        self._root = topic_root
        self.cache: dict[str, tuple[int, bytes]] = {}

    def __call__(self, u: Uplink) -> tuple[int, bytes]:
        hit = self.cache.get(u.device_id)
        if hit is None:
            topic = u.topic if self._root is None else self._root + u.topic[len("devices"):]
            hit = (zlib.crc32(u.device_id.encode()) % self._size, topic_field(topic))
            self.cache[u.device_id] = hit
        return hit


async def run_load(
    pool: MqttPool, uplinks: Iterator[Uplink], *, rate: float, duration_s: float,
    max_messages: int | None = None, qos: int = 0, topic_root: str | None = None,
    progress: bool = False, stop: Callable[[], bool] = lambda: False,
    injector: FaultInjector | None = None,
) -> LoadResult:
    """Publish ``uplinks`` at ``rate``/s until ``duration_s``, ``max_messages`` or ``stop()``."""
    route = _Route(pool.size, topic_root)
    routes = route.cache
    limit = max_messages if max_messages is not None else int(rate * duration_s)
    tick_max = max(1, int(rate / 50))  # at most 20 ms of messages per tick
    reporter = asyncio.create_task(_report(pool)) if progress else None
    publish, publish_nowait = pool.publish, pool.publish_nowait
    started = time.monotonic()
    sent = 0
    try:
        while sent < limit and not stop():
            elapsed = time.monotonic() - started
            if elapsed >= duration_s:
                break
            due = min(tick_max, int(elapsed * rate) + 1 - sent, limit - sent)
            if due <= 0:
                pool.flush()
                await asyncio.sleep(max(0.001, (sent + 1) / rate - elapsed))
                continue
            n = 0
            for u in islice(uplinks, due):
                n += 1
                hit = routes.get(u.device_id)
                if hit is None:
                    hit = route(u)
                conn, topic = hit
                if u.reconnect:
                    await pool.reconnect(conn)
                if not publish_nowait(conn, topic, u.payload, qos):
                    await publish(conn, topic, u.payload, qos)
            sent += n
            if n < due:  # the stream ended
                limit = sent
            pool.flush()
            await asyncio.sleep(0)
        await pool.drain(timeout_s=15.0)
    finally:
        if reporter is not None:
            reporter.cancel()
            sys.stderr.write("\n")
    s = pool.stats
    return LoadResult(
        qos=qos, connections=pool.size, sent=s.sent, acked=s.acked if qos else s.sent,
        errors=s.errors, reconnects=s.reconnects, elapsed_s=time.monotonic() - started,
        latencies_ns=s.latencies_ns, faults=dict(injector.counts) if injector else {},
    )


async def _report(pool: MqttPool) -> None:
    last, t0 = 0, time.monotonic()
    while True:
        await asyncio.sleep(1)
        s = pool.stats
        sys.stderr.write(
            f"\rsent={s.sent} acked={s.acked} errors={s.errors} rate={s.sent - last}/s "
            f"inflight={sum(pool.inflight)} t={time.monotonic() - t0:.0f}s   "
        )
        sys.stderr.flush()
        last = s.sent
