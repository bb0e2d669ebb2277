"""Put recorded transitions on the alerts topic (keyed by device id), then mark them.

Transitions are committed first (the engine's checkpoint, or an operator's
action through the API) and published after, from the ``published_at IS
NULL`` index: a crash in between publishes them again (at-least-once;
consumers dedupe on ``(alert_id, seq)``).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import msgspec
from aiokafka.errors import KafkaError
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from alerts.metrics import AlertMetrics
from alerts.rules import GRADE_LABEL, Grade
from brokers.base import Producer
from citysense.exceptions import CitysenseError
from storage import alerts_engine_sql as q
from storage.db import TRANSIENT

log = logging.getLogger(__name__)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    raise TypeError(type(obj))


_encoder = msgspec.json.Encoder(enc_hook=_default)


async def publish_pending(pool: AsyncConnectionPool, producer: Producer, topic: str,
                          limit: int = 5000) -> int:
    published = 0
    while True:
        async with pool.connection() as conn:
            rows = await q.unpublished(conn, limit)
            if not rows:
                return published
            records = []
            for row in rows:
                row["grade_name"] = GRADE_LABEL[Grade(row["grade"])]
                records.append((str(row["device_id"]).encode(), _encoder.encode(row)))
            await producer.send_batch(topic, records)
            await q.mark_published(conn, [r["transition_id"] for r in rows])
            await conn.commit()
            published += len(rows)
        if len(rows) < limit:
            return published


class Publisher:
    """One publisher per engine: runs one at a time; a failure leaves the rows for the next try."""

    def __init__(self, pool: AsyncConnectionPool, producer: Producer, topic: str,
                 metrics: AlertMetrics) -> None:
        self._pool, self._producer, self._topic, self._metrics = pool, producer, topic, metrics
        self._lock = asyncio.Lock()

    async def publish(self) -> None:
        async with self._lock:
            try:
                self._metrics.published.inc(await publish_pending(self._pool, self._producer, self._topic))
            except (CitysenseError, KafkaError, *TRANSIENT, PoolTimeout) as exc:
                log.warning("publishing transitions failed (they stay unpublished, retried): %s", exc)
