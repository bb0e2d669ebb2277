"""The consume -> handle -> commit loop shared by every Kafka-fed stage.

The handler's side effects (records produced, rows committed) must be
durable when it returns; only then are the offsets committed. A lock
around handle+commit lets ``on_revoked`` wait for the batch in flight, so a
rebalance hands over partitions with nothing processed-but-uncommitted
(commit on revoke). A retriable failure retries the same batch with
backoff; nothing is committed past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from brokers.base import Bus, Consumer, Message, TopicPartition
from brokers.exceptions import CommitFailedError
from citysense.exceptions import CitysenseError
from citysense.metrics import Metrics

log = logging.getLogger(__name__)

Batches = Mapping[TopicPartition, Sequence[Message]]
Handler = Callable[[Batches], Awaitable[None]]


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
    ) -> None:
        self._handler = handler
        self._metrics = metrics
        self.name = name
        self._max_records = max_records
        self._poll_timeout_ms = poll_timeout_ms
        self._retry_backoff_s = retry_backoff_s
        self._max_retry_backoff_s = max_retry_backoff_s
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._revoking = asyncio.Event()  # a rebalance waits: stop retrying, hand over
        self.consumer: Consumer = bus.consumer(topics, group, on_revoked=self._on_revoked)
        self.batches_committed = 0
        self.records_committed = 0

    async def _on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        # The batch in flight finishes and commits first; one stuck retrying (say, the
        # database is down) gives up uncommitted instead of holding the rebalance hostage:
        # its side effects are idempotent and the new owner redoes it.
        self._revoking.set()
        try:
            async with self._lock:
                log.info("partitions revoked: %s", sorted(partitions))
        finally:
            self._revoking.clear()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Consume until ``request_stop()``; the batch in flight always completes."""
        await self.consumer.start()
        try:
            while not self._stopping.is_set():
                batches = await self.consumer.getmany(self._poll_timeout_ms, self._max_records)
                if batches:
                    await self._handle_and_commit(batches)
        finally:
            await self.consumer.stop()

    async def _handle_and_commit(self, batches: Batches) -> None:
        async with self._lock:
            owned = self.consumer.assignment()
            # Records of partitions revoked since getmany belong to the new owner now.
            batches = {tp: msgs for tp, msgs in batches.items() if tp in owned}
            if not batches:
                return
            started = time.perf_counter()
            if not await self._handle_with_retries(batches):
                log.warning("batch abandoned uncommitted to a rebalance; the new owner redoes it")
                return
            offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batches.items()}
            try:
                await self.consumer.commit(offsets)
            except CommitFailedError as exc:
                # Side effects are durable and idempotent; the next owner redoes them harmlessly.
                log.warning("offset commit lost to a rebalance: %s", exc)
                return
            self.batches_committed += 1
            count = sum(len(m) for m in batches.values())
            self.records_committed += count
            if self._metrics is not None:
                self._metrics.batch_seconds.labels(self.name).observe(time.perf_counter() - started)
                self._metrics.records.labels(self.name, "committed").inc(count)

    async def _handle_with_retries(self, batches: Batches) -> bool:
        """True once the handler succeeded; False if a rebalance interrupted the retries."""
        delay = self._retry_backoff_s
        while True:
            try:
                await self._handler(batches)
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
