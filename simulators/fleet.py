"""A small fleet of devices, one authenticated MQTT connection each.

Each device logs in as itself (username = device id, password derived from
the device secret), so the broker's ACL is exercised for real: a device
can publish only under its own topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from brokers.mqtt import MqttClient, MqttConfig
from citysense.credentials import device_password
from simulators.air import Uplink


@dataclass
class FleetStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0


class Fleet:
    def __init__(self, mqtt_url: str, device_secret: str, device_ids: Sequence[str]) -> None:
        # The broker binds a device's client id to its id (deploy/local/README.md), so two fleets
        # of the same devices take over each other's connections: run one at a time.
        self._clients = {
            d: MqttClient(MqttConfig(url=mqtt_url, username=d, password=device_password(device_secret, d),
                                     client_id=d))
            for d in device_ids
        }
        self.stats = FleetStats()

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for c in self._clients.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self._clients.values()))

    async def publish_all(
        self,
        uplinks: Iterable[Uplink],
        *,
        qos: int = 1,
        rate: float | None = None,
        window: int = 2000,
        stop: Callable[[], bool] = lambda: False,
    ) -> FleetStats:
        """Publish in order, at most ``rate`` per second, at most ``window`` unacknowledged."""
        pending: set[asyncio.Future[None]] = set()
        started = time.monotonic()
        for i, uplink in enumerate(uplinks):
            if stop():
                break
            if rate:
                ahead = i / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            while len(pending) >= window:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            fut = self._clients[uplink.device_id].publish(uplink.topic, uplink.payload, qos)
            fut.add_done_callback(self._count)  # live counts for progress lines
            pending.add(fut)
            self.stats.sent += 1
        if pending:
            await asyncio.wait(pending)
        return self.stats

    def _count(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.stats.errors += 1
        else:
            self.stats.acked += 1
