"""The alert engine: readings topic -> alert state, transitions, incidents, outbox.

A ``ConsumerStage`` in its own consumer group. Each record batch is
evaluated against the rules that select its device, in device time; the
resulting transitions and the changed devices' state are held in memory and
written in ONE transaction at the stage's checkpoint, after which the stage
commits the offsets. A crash in between re-reads the batches since the last
checkpoint from the restored state, and the per-rule ``last_ns`` watermark
makes the replayed readings no-ops: nothing is lost, nothing repeated.
On partition assignment the engine loads those partitions' device state
(and starts watching registered devices there that never reported); on
revocation the stage checkpoints first and the engine forgets them.
Silence and state-duration deadlines run on heaps against an injectable
clock; rules reload when the rules version in the database changes (and the
open alerts of rules gone are resolved, ``alerts/retire.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from alerts.directory import ActiveSilence, DeviceInfo, guess, partition_of, registered, selects
from alerts.durations import DurationTimers
from alerts.evaluate import evaluate_batch
from alerts.lifecycle import NS, Compiled, Op
from alerts.metrics import AlertMetrics
from alerts.notify import device_time
from alerts.publisher import Publisher
from alerts.recorder import Recorder
from alerts.repeats import Repeats
from alerts.retire import REMOVED, retire, retire_all
from alerts.rules import Silence, StateDuration
from alerts.rules_db import load_enabled
from alerts.settings import AlertSettings
from alerts.silence import DeadlineHeap, due, schedule
from alerts.state import DeviceState, decode_state, encode_state
from brokers.base import Bus, Producer, TopicPartition
from brokers.stage import Batches, ConsumerStage
from citysense.metrics import Metrics
from citysense.records import decode_batch
from storage import alert_rules_store
from storage import alerts_engine_sql as q
from storage.db import TRANSIENT
from storage.exceptions import StorageUnavailableError

log = logging.getLogger(__name__)
Clock = Callable[[], int]


class AlertEngine:
    def __init__(self, bus: Bus, pool: AsyncConnectionPool, settings: AlertSettings, *,
                 clock: Clock = time.time_ns, metrics: Metrics | None = None, tick_s: float = 0.2,
                 group_wait_s: float = 30.0, group_interval_s: float = 0.0) -> None:
        self._pool = pool
        self._settings = settings
        self.clock = clock
        self._tick_s = tick_s
        self._producer: Producer = bus.producer()
        self.metrics = AlertMetrics(metrics.registry if metrics else None)
        self.stage = ConsumerStage(
            bus, [settings.topic_readings], settings.alerts_group, self._handle,
            max_records=settings.alerts_max_records, metrics=metrics, name="alerts",
            checkpoint=self.flush, checkpoint_interval_s=settings.alerts_checkpoint_interval_s,
            on_assigned=self._on_assigned, on_revoked=self._on_revoked)
        self._lock = asyncio.Lock()
        self.devices: dict[str, DeviceState] = {}
        self._dirty: set[str] = set()
        self._ops: list[Op] = []
        self.rules: list[Compiled] = []
        self.rules_version = -1
        self._registry: dict[str, DeviceInfo] = {}
        self._applicable: dict[str, list[Compiled]] = {}
        self._silences: list[ActiveSilence] = []
        self.heap = DeadlineHeap()
        self.repeats = Repeats()
        self.durations = DurationTimers()
        self._by_id: dict[str, Compiled] = {}
        self._rate_windows: dict[str, int] = {}
        self.recorder = Recorder(self.info, self.devices.get, lambda: self._silences,
                                 incident_window_s=settings.alerts_incident_window_s,
                                 group_wait_s=group_wait_s, group_interval_s=group_interval_s, clock=clock)
        self._stopping = asyncio.Event()
        self._publisher = Publisher(pool, self._producer, settings.topic_alerts, self.metrics)

    # ---- directory ---------------------------------------------------------------------------
    def info(self, device_id: str) -> DeviceInfo:
        return self._registry.get(device_id) or guess(device_id)

    def rules_for(self, device_id: str) -> list[Compiled]:
        found = self._applicable.get(device_id)
        if found is None:
            d = self.info(device_id)
            found = self._applicable[device_id] = [c for c in self.rules if selects(c.rule.selector, d)]
        return found

    def _rule_ids(self, device_id: str) -> set[str]:
        return {c.rule.id for c in self.rules_for(device_id)}

    async def reload(self) -> bool:
        """Load rules, silences and the registry if the rules version changed."""
        async with self._pool.connection() as conn:
            version = await alert_rules_store.rules_version(conn)
            if version == self.rules_version:
                return False
            version, rules = await load_enabled(conn)
            silences = await alert_rules_store.list_silences(conn)
            devices = await q.load_devices(conn)
            if self.rules_version < 0:
                await self.recorder.rate.load(conn)  # rate limits count what was sent before a restart
        async with self._lock:
            self.rules = [Compiled.of(r, recv) for r, recv in rules]
            self._by_id = {c.rule.id: c for c in self.rules}
            self._rate_windows = {c.rule.id: int(c.rule.rate_limit.per * NS) for c in self.rules
                                  if c.rule.rate_limit is not None}
            self.rules_version = version
            self._silences = [ActiveSilence.of(s.selector, s.starts_at, s.ends_at) for s in silences]
            self._registry = {d.device_id: registered(d) for d in devices}
            self._applicable.clear()
            self.recorder.silence_rule_ids = frozenset(
                c.rule.id for c in self.rules if isinstance(c.rule.condition, Silence))
            self._ops += retire_all(self.devices, self._rule_ids, self._by_id, self.clock())
            self._watch(set(self.devices), self._owned_partitions())
        await self.flush()  # this engine's own transitions of the old rules first, then close the rest
        async with self._pool.connection() as conn, conn.transaction():
            await q.resolve_rules_gone(conn, list(self._by_id), REMOVED)
        log.info("alert rules version %d: %d rules, %d registered devices", version, len(rules), len(devices))
        return True

    # ---- partitions --------------------------------------------------------------------------
    def _owned_partitions(self) -> set[int]:
        return {tp.partition for tp in self.stage.consumer.assignment()}

    def partition_of(self, device_id: str) -> int:
        return partition_of(device_id, self._settings.readings_partitions)

    async def _on_assigned(self, tps: frozenset[TopicPartition]) -> None:
        partitions = {tp.partition for tp in tps}
        async with self._lock:  # no batch of these partitions is evaluated before their state is in
            rows = await self._load_states(sorted(partitions))
            for device_id, blob in rows:
                if device_id not in self.devices:
                    ds = self.devices[device_id] = decode_state(blob)
                    self._ops += retire(device_id, ds, self._rule_ids(device_id), self._by_id, self.clock())
            self._watch(set(self.devices), partitions)
        log.info("alerts: partitions %s assigned, %d device states loaded", sorted(partitions), len(rows))

    async def _load_states(self, partitions: list[int]) -> list[tuple[str, bytes]]:
        """Retried until it succeeds: evaluating without the saved state would repeat transitions."""
        delay = 0.5
        while True:
            try:
                async with self._pool.connection() as conn:
                    return await q.load_states(conn, partitions)
            except (*TRANSIENT, PoolTimeout) as exc:
                log.warning("loading alert state of partitions %s failed, retrying: %s", partitions, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _on_revoked(self, tps: frozenset[TopicPartition]) -> None:
        gone = {tp.partition for tp in tps}
        async with self._lock:
            for device_id in [d for d, s in self.devices.items() if s.partition in gone]:
                del self.devices[device_id]
                self.heap.forget(device_id)
                self._dirty.discard(device_id)

    def _watch(self, known: set[str], partitions: set[int]) -> None:
        """Schedule silence deadlines for owned devices, including registered ones never heard."""
        now = self.clock()
        for device_id in known:
            for c in self.rules_for(device_id):
                self.repeats.schedule(c, device_id, self.devices[device_id])
                if isinstance(c.rule.condition, StateDuration):
                    self.durations.schedule(c, device_id, self.devices[device_id])
        for device_id in list(known) + [d for d in self._registry if d not in known]:
            silence = [c for c in self.rules_for(device_id) if isinstance(c.rule.condition, Silence)]
            if not silence:
                continue
            ds = self.devices.get(device_id)
            if ds is None:
                if self.partition_of(device_id) not in partitions:
                    continue
                ds = self.devices[device_id] = DeviceState(self.partition_of(device_id), watch_since_ns=now)
                self._dirty.add(device_id)
            self._schedule(device_id, ds, silence)

    def _schedule(self, device_id: str, ds: DeviceState, silence: list[Compiled]) -> None:
        schedule(self.heap, device_id, ds, silence, self.info(device_id).interval_s)

    # ---- evaluation --------------------------------------------------------------------------
    async def _handle(self, batches: Batches) -> None:
        async with self._lock:
            s = self._settings
            for tp, messages in batches.items():
                for m in messages:
                    try:
                        batch = decode_batch(m.value)
                    except msgspec.DecodeError:
                        self.metrics.bad_records.inc()
                        continue  # the writer dead-letters it; the engine has nothing to evaluate
                    ds = self.devices.get(batch.device_id)
                    if ds is None:
                        ds = self.devices[batch.device_id] = DeviceState(tp.partition)
                    ds.partition = tp.partition
                    rules = self.rules_for(batch.device_id)
                    ops, evaluations = evaluate_batch(rules, batch, ds, int(s.alerts_flap_window_s * NS),
                                                      s.alerts_flap_max)
                    self._ops += ops
                    self._dirty.add(batch.device_id)
                    self.metrics.evaluations.inc(evaluations)
                    silence = [c for c in rules if isinstance(c.rule.condition, Silence)]
                    if silence:
                        self._schedule(batch.device_id, ds, silence)
                    if ds.connectors:
                        for c in rules:
                            if isinstance(c.rule.condition, StateDuration):
                                self.durations.schedule(c, batch.device_id, ds)
                    self.metrics.lag.set(max(0.0, (self.clock() - batch.received_ns) / NS))

    def check_silence(self) -> int:
        """Evaluate the devices whose silence deadline has passed (caller holds the lock)."""
        now, count = self.clock(), 0
        for device_id in self.heap.pop_due(now):
            ds = self.devices.get(device_id)
            if ds is not None:
                silence = [c for c in self.rules_for(device_id) if isinstance(c.rule.condition, Silence)]
                ops = due(device_id, ds, silence, self.info(device_id).interval_s, now)
                self._ops += ops
                count += len(ops)
                self._dirty.add(device_id)
                self._schedule(device_id, ds, silence)
        return count

    # ---- checkpoint --------------------------------------------------------------------------
    async def flush(self) -> None:
        """State, transitions, incidents and outbox in one transaction (the stage's checkpoint)."""
        async with self._lock:
            if not self._ops and not self._dirty:
                return
            ops, dirty = self._ops, self._dirty | {op.device_id for op in self._ops}  # ops change state
            saved = {id(op.rs): (op.rs, op.rs.alert_id, op.rs.notified_ns) for op in ops}
            outbox: list[q.OutboxIn] = []
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    now = self.clock()
                    for op in ops:
                        await self.recorder.record(conn, op, outbox)
                        self.repeats.noted(op, now)
                    await self.recorder.rate.save(conn, self._rate_windows, now)
                    await q.save_states(conn, [
                        (d, s.partition, device_time(s.last_seen_ns) if s.last_seen_ns else None,
                         encode_state(s)) for d in dirty if (s := self.devices.get(d)) is not None])
            except BaseException as exc:
                self.recorder.rate.rolled_back()
                self.recorder.grouper.rolled_back()
                for rs, alert_id, notified in saved.values():
                    rs.alert_id, rs.notified_ns = alert_id, notified  # rolled back: done again next time
                if isinstance(exc, (*TRANSIENT, PoolTimeout)):
                    raise StorageUnavailableError(f"alert checkpoint failed: {exc}") from exc
                raise
            self.recorder.rate.committed()
            self.recorder.grouper.committed()
            self._ops, self._dirty = [], set()
            for op in ops:
                ds = self.devices.get(op.device_id)
                if ds is not None:
                    self.repeats.schedule(op.compiled, op.device_id, ds)
            for op in ops:
                condition = op.compiled.rule.condition.type
                self.metrics.transitions.labels(op.action, str(op.grade), condition).inc()
        await self.publish()

    async def publish(self) -> None:
        await self._publisher.publish()

    # ---- run ---------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stopping.set()
        self.stage.request_stop()

    async def run(self) -> None:
        await self.reload()
        await self._producer.start()
        ticker = asyncio.create_task(self._tick_forever())
        try:
            await self.stage.run()
        finally:
            self._stopping.set()
            await ticker
            await self._producer.stop()

    async def tick(self) -> None:
        """Reminders, state-duration and silence deadlines due by now, then a checkpoint if they
        made transitions."""
        async with self._lock:
            s, now = self._settings, self.clock()
            self._ops += self.repeats.due(now, self.devices, self._by_id)
            self._ops += self.durations.due(now, self.devices, self._by_id,
                                            int(s.alerts_flap_window_s * NS), s.alerts_flap_max)
            made = self.check_silence() or bool(self._ops)  # or left over from a failed flush
        if made:
            await self.flush()

    async def _tick_forever(self) -> None:
        last_poll = 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - last_poll >= self._settings.alerts_rules_poll_s:
                    last_poll = time.monotonic()
                    await self.reload()
                    await self.publish()
                await self.tick()
            except Exception as exc:  # noqa: BLE001 (the stage's checkpoint retries too; keep ticking)
                log.warning("alert tick failed (will retry): %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._tick_s)

