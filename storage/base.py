"""The sink contract.

``write(batches)`` stores every record of the batches and returns only after
they have committed. It is idempotent: the same batches written twice leave
the database as after once, and a write that failed part-way is completed by
writing the batches again, which is what makes at-least-once delivery from
Kafka exactly-once in the tables.

What a sink derives from many writes (``ReadingsSink``: each device's latest
state) may wait for ``flush()``, which makes it durable for every write that
returned before. The writer stage flushes before it commits offsets
(``brokers.stage``: a checkpoint), so what a crash loses before a flush is
derived again from the re-delivered batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from citysense.records import RecordBatch


@dataclass(frozen=True, slots=True)
class WriteResult:
    readings_offered: int
    readings_inserted: int
    statuses_inserted: int = 0
    health_inserted: int = 0
    # readings whose (device, metric, time) was stored already, or came twice, with another
    # value: the first stored wins (insert-or-ignore), these are only counted
    readings_conflicting: int = 0


class Sink(Protocol):
    async def write(self, batches: Sequence[RecordBatch]) -> WriteResult: ...

    async def flush(self) -> None: ...
