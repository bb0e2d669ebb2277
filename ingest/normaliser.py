"""Raw envelopes -> canonical record batches, or dead letters.

Per raw message: envelope -> topic route (kind, device, profile, codec,
directory check; cached per MQTT topic) -> size check -> decode -> dedupe
-> validate (good records kept, rejected ones dead-lettered) -> clock
(skew corrected, late flagged) -> one ``RecordBatch`` keyed by device id.
Anything that raises is dead-lettered as ``internal_error``: a poison
message never blocks the partition behind it.

``Normaliser`` runs that over the raw topic inside a ``ConsumerStage``:
readings and dead letters of a batch are both acknowledged by Kafka before
the raw offsets are committed (invariant 2), and the stage commits on
revoke, so a rebalance neither loses nor doubles a raw message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from brokers.base import Bus, KeyValue, Message, Producer, TopicPartition
from brokers.stage import Batches, ConsumerStage
from citysense.metrics import Metrics
from citysense.records import DeadLetter, encode
from ingest.codecs.base import OVERSIZE
from ingest.dedupe import Deduper
from ingest.directory import DeviceDirectory, StaticDirectory
from ingest.dlq import INTERNAL_ERROR, STAGE, dead_letter
from ingest.normalise import Normalise, NormaliseConfig, Outcome, Route
from ingest.settings import NormaliserSettings

__all__ = ["MAX_OUTPUT_BYTES", "Counters", "Normalise", "NormaliseConfig", "Normaliser", "Outcome", "Route"]

log = logging.getLogger(__name__)


# A readings-topic record must stay under Kafka's default message.max.bytes (1 MiB) with room
# for batch overhead; codecs cap records per uplink well below this.
MAX_OUTPUT_BYTES = 900_000


@dataclass
class Counters:
    uplinks_in: int = 0
    readings: int = 0
    duplicates: int = 0
    clock_corrected: int = 0
    late: int = 0
    internal_errors: int = 0
    conflicting_duplicates: int = 0


class Normaliser:
    def __init__(
        self, bus: Bus, *, raw_topic: str, readings_topic: str, dlq_topic: str,
        group: str = "citysense-normalise", max_records: int = 10_000,
        config: NormaliseConfig | None = None, directory: DeviceDirectory | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._producer: Producer = bus.producer()
        self._readings_topic = readings_topic
        self._dlq_topic = dlq_topic
        self.normalise = Normalise(config, directory)
        self.dedupe = Deduper(self.normalise.config.dedupe_window)
        self._metrics = metrics
        self.stage = ConsumerStage(bus, [raw_topic], group, self._handle, max_records=max_records,
                                   metrics=metrics, name=STAGE)
        self.readings_out = 0  # record batches produced (one per good uplink)
        self.dead_letters = 0
        self.counters = Counters()

    @classmethod
    def from_settings(cls, bus: Bus, s: NormaliserSettings, metrics: Metrics | None = None) -> Normaliser:
        directory = StaticDirectory.load(s.normalise_registry) if s.normalise_registry else None
        if directory is not None:
            log.info("device directory: %d devices from %s", len(directory), s.normalise_registry)
        else:
            log.info("no device registry configured: accepting every device of a known kind")
        return cls(bus, raw_topic=s.topic_raw, readings_topic=s.topic_readings, dlq_topic=s.topic_dlq,
                   group=s.normalise_group, max_records=s.normalise_max_records,
                   config=NormaliseConfig.from_settings(s), directory=directory, metrics=metrics)

    def request_stop(self) -> None:
        self.stage.request_stop()

    async def run(self) -> None:
        await self._producer.start()
        try:
            await self.stage.run()
        finally:
            await self._producer.stop()

    def _one(self, message: Message, tp: TopicPartition) -> Outcome:
        try:
            return self.normalise(message, self.dedupe, tp)
        except Exception as exc:  # a poison message is dead-lettered, never retried
            log.exception("normalising %s[%d]@%d failed", tp.topic, tp.partition, message.offset)
            self.counters.internal_errors += 1
            device_id = message.key.decode(errors="replace") if message.key else ""
            text = f"{type(exc).__name__}: {exc}"
            return Outcome(dead=dead_letter(message, INTERNAL_ERROR, text, device_id))

    def _dead(self, bad: list[KeyValue], message: Message, letters: list[DeadLetter]) -> None:
        for letter in letters:
            bad.append((message.key, encode(letter)))
            if self._metrics is not None:
                self._metrics.dead_letters.labels(STAGE, letter.reason_code).inc()

    async def _handle(self, batches: Batches) -> None:
        self.dedupe.retain(self.stage.consumer.assignment())
        good: list[KeyValue] = []
        bad: list[KeyValue] = []
        readings = duplicates = corrected = late = conflicts = 0
        for tp, messages in batches.items():
            for message in messages:
                out = self._one(message, tp)
                batch, dead = out.batch, out.dead
                if batch is not None:
                    value = encode(batch)
                    if len(value) <= MAX_OUTPUT_BYTES:
                        good.append((batch.device_id.encode(), value))
                        readings += len(batch.readings)
                        corrected += out.corrected
                        late += out.late
                        conflicts += out.conflicts
                    else:  # Kafka would refuse it and stall the partition
                        text = f"normalised to {len(value)} bytes, over {MAX_OUTPUT_BYTES}"
                        too_big = dead_letter(message, OVERSIZE, text, batch.device_id)
                        self._dead(bad, message, [too_big] if dead is None else [dead, too_big])
                        dead = None
                if dead is not None:
                    self._dead(bad, message, [dead])
                duplicates += out.duplicate
        try:
            await asyncio.gather(
                *([self._producer.send_batch(self._readings_topic, good)] if good else []),
                *([self._producer.send_batch(self._dlq_topic, bad)] if bad else []),
            )
        except BaseException:
            self.dedupe.discard()  # the stage retries the whole batch: nothing was seen yet
            raise
        self.dedupe.commit()
        self.readings_out += len(good)
        self.dead_letters += len(bad)
        c = self.counters
        c.uplinks_in += sum(len(m) for m in batches.values())
        c.readings += readings
        c.duplicates += duplicates
        c.clock_corrected += corrected
        c.late += late
        c.conflicting_duplicates += conflicts
        if self._metrics is not None:
            produced = self._metrics.messages
            produced.labels(STAGE, self._readings_topic, "produced").inc(len(good))
            produced.labels(STAGE, self._dlq_topic, "produced").inc(len(bad))
            m = self._metrics.records
            m.labels(STAGE, "readings").inc(readings)
            m.labels(STAGE, "duplicates").inc(duplicates)
            m.labels(STAGE, "clock_corrected").inc(corrected)
            m.labels(STAGE, "late").inc(late)
            m.labels(STAGE, "conflicting_duplicates").inc(conflicts)
