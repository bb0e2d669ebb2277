"""Put recorded transitions on the alerts topic (keyed by device id), then mark them.

Transitions are committed first (the engine's checkpoint, or an operator's
action through the API) and published after, from the ``published_at IS
NULL`` index: a crash in between publishes them again (at-least-once;
consumers dedupe on ``(alert_id, seq)``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from psycopg_pool import AsyncConnectionPool

from alerts.rules import GRADE_LABEL, Grade
from brokers.base import Producer
from storage import alerts_engine_sql as q


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
