"""The consume -> handle -> checkpoint loop shared by every Kafka-fed stage.

The handler's side effects (records produced, rows committed) must be
durable when it returns. A stage may also keep state derived from many
batches (the writer: each device's latest state); it passes a ``checkpoint``
that makes that durable, and the offsets of the batches handled so far are
committed only after it has run. ``checkpoint_interval_s`` spaces the
checkpoints (0: one after another, which is what a stage without one gets);
a crash between two loses nothing, it re-delivers the batches since the
last. A lock around handle and checkpoint lets ``on_revoked`` wait for the
batch in flight and checkpoint, so a rebalance hands over partitions with
nothing processed-but-uncommitted (commit on revoke); stopping checkpoints
too. A retriable failure retries the same batch (or checkpoint) with
backoff; nothing is committed past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from brokers.base import Bus, Consumer, Message, PartitionsCallback, TopicPartition
from brokers.exceptions import CommitFailedError
from citysense.exceptions import CitysenseError
from citysense.metrics import Metrics

log = logging.getLogger(__name__)

Batches = Mapping[TopicPartition, Sequence[Message]]
Handler = Callable[[Batches], Awaitable[None]]
Checkpoint = Callable[[], Awaitable[None]]


class ConsumerStage:
    def __init__(
        self,
        bus: Bus,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        max_records: int = 2000,
        poll_timeout_ms: int = 200,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 10.0,
        metrics: Metrics | None = None,
        name: str = "stage",
        checkpoint: Checkpoint | None = None,
        checkpoint_interval_s: float = 0.0,
        on_assigned: PartitionsCallback | None = None,
        on_revoked: PartitionsCallback | None = None,
    ) -> None:
        self._handler = handler
        self._metrics = metrics
        self.name = name
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._checkpoint = checkpoint
        self._checkpoint_interval_s = checkpoint_interval_s
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._revoking = asyncio.Event()  # a rebalance waits: stop retrying, hand over
        self._after_revoked = on_revoked  # the stage's owner drops what it kept for those partitions
        self._after_assigned = on_assigned
        # Revoked and not assigned again: records of these fetched before the rebalance are
        # the new owner's (the consumer's assignment() can still list them for a while).
        self._revoked: set[TopicPartition] = set()
        self.consumer: Consumer = bus.consumer(topics, group, on_revoked=self._on_revoked,
                                               on_assigned=self._on_assigned)
        # handled, not committed yet: the next offset per partition, since when, how much
        self._pending: dict[TopicPartition, int] = {}
        self._pending_since = 0.0
        self._pending_batches = self._pending_records = 0
        self._checkpointing: asyncio.Task[None] | None = None  # one at a time, beside new batches
        self.batches_committed = 0
        self.records_committed = 0

    async def _on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        # The batch in flight finishes and the stage checkpoints first; one stuck retrying
        # (say, the database is down) gives up uncommitted instead of holding the rebalance
        # hostage: its side effects are idempotent and the new owner redoes it.
        self._revoking.set()
        try:
            async with self._lock:
                try:
                    await self._checkpoint_now()
                except CitysenseError as exc:  # not ours to raise into the consumer's rebalance
                    log.warning("checkpoint before revocation failed, offsets uncommitted: %s", exc)
                for tp in partitions:  # given up on: the new owner starts from the last commit
                    self._pending.pop(tp, None)
                self._revoked.update(partitions)
                if self._after_revoked is not None:
                    await self._after_revoked(partitions)
                log.info("partitions revoked: %s", sorted(partitions))
        finally:
            self._revoking.clear()

    async def _on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        # The owner first (it may load state for these partitions), then their records flow.
        if self._after_assigned is not None:
            await self._after_assigned(partitions)
        self._revoked.difference_update(partitions)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``request_stop()``; the batch in flight always completes, and what was
        handled is checkpointed and committed before the consumer stops.

        A due checkpoint runs as a task while the next batches are handled (the
        writer's flush takes a connection and server time the batches would
        otherwise wait for); the offsets it commits are the ones taken when it
        started, whose side effects it covers. One runs at a time."""
        await self.consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await self.consumer.getmany(self._poll_timeout_ms, self._max_records)
                if batches:
                    await self._handle(batches)
                if self._pending and self._checkpoint_due():
                    async with self._lock:
                        await self._finish_checkpoint()  # raises what a failed one raised
                        self._checkpointing = asyncio.create_task(self._checkpoint_and_commit())
                elif self._checkpointing is not None and self._checkpointing.done():
                    await self._finish_checkpoint()
            async with self._lock:
                await self._checkpoint_now()
        finally:
            if self._checkpointing is not None:  # after a failure: its offsets stay uncommitted
                self._checkpointing.cancel()
                with contextlib.suppress(BaseException):
                    await self._checkpointing
            await self.consumer.stop()

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self._pending_since >= self._checkpoint_interval_s

    async def _handle(self, batches: Batches) -> None:
        async with self._lock:
            owned = self.consumer.assignment()
            # Records of partitions revoked since getmany belong to the new owner now.
            batches = {tp: msgs for tp, msgs in batches.items() if tp in owned and tp not in self._revoked}
            if not batches:
                return
            started = time.perf_counter()
            if not await self._with_retries(lambda: self._handler(batches)):
                log.warning("batch abandoned uncommitted to a rebalance; the new owner redoes it")
                return
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.update({tp: msgs[-1].offset + 1 for tp, msgs in batches.items()})
            self._pending_batches += 1
            self._pending_records += sum(len(m) for m in batches.values())
            if self._metrics is not None:
                self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)

    async def _finish_checkpoint(self) -> None:
        task, self._checkpointing = self._checkpointing, None
        if task is not None:
            await task

    async def _checkpoint_now(self) -> None:
        """The running checkpoint, then one of everything handled since (under the lock)."""
        await self._finish_checkpoint()
        await self._checkpoint_and_commit()

    async def _checkpoint_and_commit(self) -> None:
        """Checkpoint, then commit the offsets of every batch handled until now.

        The offsets are taken before the checkpoint starts: every batch they cover has
        returned from the handler, so its side effects are in what the checkpoint makes
        durable (batches handled meanwhile may be too; their offsets wait for the next)."""
        if not self._pending:
            return
        offsets, self._pending = self._pending, {}
        batches, records = self._pending_batches, self._pending_records
        self._pending_batches = self._pending_records = 0
        if self._checkpoint is not None and not await self._with_retries(self._checkpoint):
            log.warning("checkpoint abandoned to a rebalance; the offsets stay uncommitted")
            return
        try:
            await self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # Side effects are durable and idempotent; the next owner redoes them harmlessly.
            log.warning("offset commit lost to a rebalance: %s", exc)
            return
        self.batches_committed += batches
        self.records_committed += records
        if self._metrics is not None:
            self._metrics.records.labels(self.name, "committed").inc(records)

    async def _with_retries(self, call: Callable[[], Awaitable[None]]) -> bool:
        """True once ``call`` succeeded; False if a rebalance interrupted the retries."""
        delay = self._retry_backoff_s
        while True:
            try:
                await call()
                return True
            except CitysenseError as exc:
                if not exc.retriable or self._stopping.is_set():
                    raise
                if self._revoking.is_set():
                    return False
                log.warning("retriable failure, retrying in %.1fs: %s", delay, exc)
                if self._metrics is not None:
                    self._metrics.retries.labels(self.name).inc()
                with contextlib.suppress(TimeoutError):  # a revocation cuts the wait short
                    await asyncio.wait_for(self._revoking.wait(), delay)
                delay = min(delay * 2, self._max_retry_backoff_s)
