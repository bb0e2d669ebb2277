"""Live streams: one Kafka consumer per API process fans messages out to SSE subscribers.

The consumer has no group and starts at the end of the alerts and readings
topics: a live view, not a replay (history is in the database). Each
subscriber has a bounded buffer; a subscriber whose buffer is full is
dropped (its stream ends with a ``dropped`` event) so one slow browser never
slows the others or grows memory. ``stop()`` ends every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer

from citysense.records import decode_batch

log = logging.getLogger(__name__)
DistrictOf = Callable[[str], Awaitable[str | None]]
GRADES = {"red": 1, "orange": 2, "yellow": 3, "blue": 4}


class Subscription:
    def __init__(self, limit: int, *, device_id: str | None = None, district: str | None = None,
                 max_grade: int | None = None) -> None:
        self.device_id = device_id
        self.district = district
        self.max_grade = max_grade
        self.dropped = False
        self.closed = False
        self._items: deque[str] = deque()
        self._limit = limit
        self._wake = asyncio.Event()

    def push(self, item: str) -> bool:
        """False when the buffer is full: the subscriber is too slow and is dropped."""
        if self.closed:
            return True
        if len(self._items) >= self._limit:
            self.dropped = True
            self.close()
            return False
        self._items.append(item)
        self._wake.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def next(self) -> str | None:
        """The next item, or None once closed (stop, or dropped)."""
        while not self._items and not self.closed:
            self._wake.clear()
            await self._wake.wait()
        if self.closed:
            return None
        return self._items.popleft()


def _grade(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        return GRADES.get(value.lower())
    return None


def decode_alert(value: bytes) -> dict[str, Any] | None:
    """An alert transition as a dict (JSON, else msgpack); None when it is neither."""
    for decode in (json.loads, msgspec.msgpack.decode):
        try:
            item = decode(value)
        except (ValueError, msgspec.DecodeError):
            continue
        return item if isinstance(item, dict) else None
    return None


class LiveHub:
    def __init__(self, bootstrap: str, alerts_topic: str, readings_topic: str, buffer: int,
                 district_of: DistrictOf, on_drop: Callable[[], None] = lambda: None) -> None:
        self._bootstrap = bootstrap
        self._alerts_topic = alerts_topic
        self._readings_topic = readings_topic
        self._buffer = buffer
        self._district_of = district_of
        self._on_drop = on_drop
        self._alert_subs: set[Subscription] = set()
        self._device_subs: dict[str, set[Subscription]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._uplinks: deque[tuple[float, int]] = deque()

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(self._alerts_topic, self._readings_topic,
                                    bootstrap_servers=self._bootstrap,
                                    group_id=None, enable_auto_commit=False, auto_offset_reset="latest",
                                    client_id="citysense-api-live")
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(self._run(), name="api-live")

    async def stop(self) -> None:
        for sub in [*self._alert_subs, *(s for subs in self._device_subs.values() for s in subs)]:
            sub.close()
        self._alert_subs.clear()
        self._device_subs.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def kafka_reachable(self) -> bool:
        if self._consumer is None:
            return False
        try:
            await asyncio.wait_for(self._consumer.topics(), timeout=3)
        except Exception:  # noqa: BLE001  # any failure to fetch metadata means not ready
            return False
        return True

    def subscribe_alerts(self, district: str | None, max_grade: int | None) -> Subscription:
        sub = Subscription(self._buffer, district=district, max_grade=max_grade)
        self._alert_subs.add(sub)
        return sub

    def subscribe_device(self, device_id: str) -> Subscription:
        sub = Subscription(self._buffer, device_id=device_id)
        self._device_subs.setdefault(device_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.close()
        self._alert_subs.discard(sub)
        if sub.device_id is not None:
            subs = self._device_subs.get(sub.device_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._device_subs[sub.device_id]

    @property
    def subscribers(self) -> int:
        return len(self._alert_subs) + sum(len(s) for s in self._device_subs.values())

    def uplinks_per_s(self, window_s: float = 10.0) -> float:
        cutoff = time.monotonic() - window_s
        while self._uplinks and self._uplinks[0][0] < cutoff:
            self._uplinks.popleft()
        return sum(n for _, n in self._uplinks) / window_s

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=2000)
            except asyncio.CancelledError:
                raise
            except Exception:  # the consumer reconnects by itself; keep the loop alive
                log.exception("live consumer failed to fetch; retrying in 1 s")
                await asyncio.sleep(1)
                continue
            for tp, messages in batches.items():
                if tp.topic == self._readings_topic:
                    self._uplinks.append((time.monotonic(), len(messages)))
                    for m in messages:
                        self._readings(m.key, m.value)
                else:
                    for m in messages:
                        await self._alert(m.value)

    def _deliver(self, subs: set[Subscription], item: dict[str, Any]) -> None:
        if not subs:
            return
        data = json.dumps(item, default=str, ensure_ascii=False)  # once, whatever the subscribers
        for sub in list(subs):
            if not sub.push(data):
                self.unsubscribe(sub)
                self._on_drop()

    def _readings(self, key: bytes | None, value: bytes) -> None:
        if not self._device_subs or key is None:
            return
        subs = self._device_subs.get(key.decode(errors="replace"))
        if not subs:
            return
        try:
            batch = decode_batch(value)
        except msgspec.DecodeError:
            return
        self._deliver(subs, {
            "device_id": batch.device_id, "received_ns": batch.received_ns,
            "readings": [{"metric": r.metric, "time_ns": r.time_ns, "value": r.value}
                         for r in batch.readings],
        })

    async def _alert(self, value: bytes) -> None:
        if not self._alert_subs:
            return
        item = decode_alert(value)
        if item is None:
            return
        grade = _grade(item.get("grade"))
        district = item.get("district")
        if district is None and isinstance(item.get("device_id"), str) and any(
                s.district for s in self._alert_subs):
            district = await self._district_of(item["device_id"])
        wanted = {s for s in self._alert_subs
                  if (s.district is None or s.district == district)
                  and (s.max_grade is None or (grade is not None and grade <= s.max_grade))}
        self._deliver(wanted, item)
