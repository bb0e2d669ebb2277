"""The storage writer stage: readings topic -> database, then offsets.

The sink's transaction commits before the Kafka offsets do (invariant 3):
a writer killed between the two re-reads the batch on restart and the
primary key turns the second write into a no-op.
"""

from __future__ import annotations

import time

import msgspec

from brokers.base import Bus, KeyValue
from brokers.stage import Batches, ConsumerStage
from citysense.metrics import Metrics
from citysense.records import DeadLetter, RecordBatch, decode_batch, encode
from storage.base import Sink

STAGE = "write"
BAD_RECORD = "bad_record"


class Writer:
    def __init__(
        self, bus: Bus, sink: Sink, *, readings_topic: str, dlq_topic: str,
        group: str = "citysense-writer", max_records: int = 5000, metrics: Metrics | None = None,
    ) -> None:
        self._sink = sink
        self._metrics = metrics
        self._producer = bus.producer()
        self._dlq_topic = dlq_topic
        self.stage = ConsumerStage(bus, [readings_topic], group, self._handle, max_records=max_records,
                                   metrics=metrics, name=STAGE)
        self.rows_inserted = 0

    def request_stop(self) -> None:
        self.stage.request_stop()

    async def run(self) -> None:
        await self._producer.start()
        try:
            await self.stage.run()
        finally:
            await self._producer.stop()

    async def _handle(self, batches: Batches) -> None:
        records: list[RecordBatch] = []
        dead: list[KeyValue] = []
        for msgs in batches.values():
            for m in msgs:
                try:
                    records.append(decode_batch(m.value))
                except msgspec.DecodeError as exc:
                    letter = DeadLetter(BAD_RECORD, f"not a record batch: {exc}", STAGE, m.topic,
                                        m.partition, m.offset, m.value, "", time.time_ns())
                    dead.append((m.key, encode(letter)))
        # The sink first: its write is idempotent, a dead-letter send is not, so a retried
        # batch (transient database failure) does not dead-letter the same record twice.
        result = await self._sink.write(records)
        if dead:
            await self._producer.send_batch(self._dlq_topic, dead)
        self.rows_inserted += result.readings_inserted
        if self._metrics is not None:
            self._metrics.records.labels(STAGE, "readings_offered").inc(result.readings_offered)
            self._metrics.records.labels(STAGE, "readings_inserted").inc(result.readings_inserted)
            if dead:
                self._metrics.dead_letters.labels(STAGE, BAD_RECORD).inc(len(dead))
