"""The sink contract.

``write(batches)`` stores every record of the batches in one database
transaction and returns only after it has committed. It is idempotent:
the same batches written twice leave the database as after once, which is
what makes at-least-once delivery from Kafka exactly-once in the tables.
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


class Sink(Protocol):
    async def write(self, batches: Sequence[RecordBatch]) -> WriteResult: ...
