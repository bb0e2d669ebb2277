"""The storage writer stage: readings topic -> database, then offsets.

Every batch's rows commit before the Kafka offsets do (invariant 3). The
sink's derived state (each device's latest values) is flushed at checkpoints,
every ``checkpoint_interval_s``, and the offsets of the batches handled since
the last checkpoint are committed only after that flush (``brokers.stage``).
A writer killed in between re-reads those batches on restart: the primary
key turns their rows into no-ops, and their state is derived again.
"""

from __future__ import annotations

import time

import msgspec

from brokers.base import Bus, KeyValue, Message
from brokers.stage import Batches, ConsumerStage
from citysense.metrics import Metrics
from citysense.records import DeadLetter, RecordBatch, decode_batch, encode
from storage.base import Sink
from storage.exceptions import StorageRejectedError

STAGE = "write"
BAD_RECORD = "bad_record"  # not a record batch at all
REFUSED = "refused_by_database"  # a value the database cannot store (e.g. NUL in text)


class Writer:
    def __init__(
        self, bus: Bus, sink: Sink, *, readings_topic: str, dlq_topic: str,
        group: str = "citysense-writer", max_records: int = 5000, metrics: Metrics | None = None,
        checkpoint_interval_s: float = 1.0,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._producer = bus.producer()
        self._dlq_topic = dlq_topic
        self.stage = ConsumerStage(bus, [readings_topic], group, self._handle, max_records=max_records,
                                   metrics=metrics, name=STAGE, checkpoint=sink.flush,
                                   checkpoint_interval_s=checkpoint_interval_s)
        self.rows_inserted = 0
        self.readings_conflicting = 0  # same device, metric and time as a stored row, other value

    def request_stop(self) -> None:
        self.stage.request_stop()

    async def run(self) -> None:
        await self._producer.start()
        try:
            await self.stage.run()
        finally:
            await self._producer.stop()

    async def _handle(self, batches: Batches) -> None:
        pairs: list[tuple[Message, RecordBatch]] = []
        dead: list[tuple[str, KeyValue]] = []  # (reason, record)
        for msgs in batches.values():
            for m in msgs:
                try:
                    pairs.append((m, decode_batch(m.value)))
                except msgspec.DecodeError as exc:
                    dead.append((BAD_RECORD, _dead_letter(m, BAD_RECORD, f"not a record batch: {exc}", "")))
        # The sink first: its write is idempotent, a dead-letter send is not, so a retried
        # batch (transient database failure) does not dead-letter the same record twice.
        offered, inserted, conflicting = await self._write_isolating(pairs, dead)
        if dead:
            await self._producer.send_batch(self._dlq_topic, [record for _, record in dead])
        self.rows_inserted += inserted
        self.readings_conflicting += conflicting
        if self._metrics is not None:
            self._metrics.records.labels(STAGE, "readings_offered").inc(offered)
            self._metrics.records.labels(STAGE, "readings_inserted").inc(inserted)
            self._metrics.records.labels(STAGE, "readings_conflicting").inc(conflicting)
            for reason, _ in dead:
                self._metrics.dead_letters.labels(STAGE, reason).inc()

    async def _write_isolating(
        self, pairs: list[tuple[Message, RecordBatch]], dead: list[tuple[str, KeyValue]]
    ) -> tuple[int, int, int]:
        """Write; if the database refuses the records themselves, bisect to the culprits.

        Each half is its own idempotent transaction; only the records the database
        refuses on their own are dead-lettered, so one bad value never stalls a partition
        and never takes its neighbours with it.
        """
        if not pairs:
            return 0, 0, 0
        try:
            result = await self._sink.write([b for _, b in pairs])
            return result.readings_offered, result.readings_inserted, result.readings_conflicting
        except StorageRejectedError as exc:
            if len(pairs) == 1:
                m, b = pairs[0]
                dead.append((REFUSED, _dead_letter(m, REFUSED, str(exc), b.device_id)))
                return 0, 0, 0
            half = len(pairs) // 2
            a = await self._write_isolating(pairs[:half], dead)
            b2 = await self._write_isolating(pairs[half:], dead)
            return a[0] + b2[0], a[1] + b2[1], a[2] + b2[2]


def _dead_letter(m: Message, reason: str, text: str, device_id: str) -> KeyValue:
    device = device_id or (m.key.decode(errors="replace") if m.key else "")
    letter = DeadLetter(reason, text, STAGE, m.topic, m.partition, m.offset, m.value, device, time.time_ns())
    return m.key, encode(letter)
