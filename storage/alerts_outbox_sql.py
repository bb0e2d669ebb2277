"""The webhook outbox: claim deliverable rows in order, record outcomes.

A row is deliverable when it is due and it is the oldest pending row of its
(receiver, ordering key): a notification waiting out a retry holds back the
later ones of the same device for the same receiver, so each receiver sees
a device's notifications in order. ``FOR UPDATE SKIP LOCKED`` lets several
workers share the outbox without delivering a row twice at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.db import Conn


@dataclass(frozen=True, slots=True)
class OutboxRow:
    outbox_id: int
    receiver: str
    device_id: str
    alert_id: int | None
    incident_id: int | None
    idempotency_key: str
    payload: dict[str, Any]
    attempts: int


async def claim(conn: Conn, limit: int) -> list[OutboxRow]:
    """Inside the caller's transaction: lock up to ``limit`` deliverable rows."""
    cur = await conn.execute(
        """SELECT o.outbox_id, o.receiver, o.device_id, o.alert_id, o.incident_id, o.idempotency_key,
                  o.payload, o.attempts
           FROM alert_outbox o
           WHERE o.state = 'pending' AND o.next_attempt_at <= now()
             AND NOT EXISTS (SELECT 1 FROM alert_outbox p WHERE p.state = 'pending'
                             AND p.receiver = o.receiver AND p.device_id = o.device_id
                             AND p.outbox_id < o.outbox_id)
           ORDER BY o.outbox_id LIMIT %s FOR UPDATE SKIP LOCKED""", (limit,))
    return [OutboxRow(*row) for row in await cur.fetchall()]


async def incident_members(conn: Conn, incident_id: int) -> tuple[int, list[dict[str, Any]]]:
    cur = await conn.execute(
        """SELECT alert_id, device_id, rule_id, state, grade FROM alerts WHERE incident_id = %s
           ORDER BY alert_id""", (incident_id,))
    members = [{"alert_id": a, "device_id": d, "rule_id": r, "state": s, "grade": g}
               for a, d, r, s, g in await cur.fetchall()]
    return len(members), members


async def delivered(conn: Conn, outbox_id: int) -> None:
    await conn.execute("""UPDATE alert_outbox SET state = 'delivered', delivered_at = now(),
                              attempts = attempts + 1, last_error = NULL WHERE outbox_id = %s""",
                       (outbox_id,))


async def retry_later(conn: Conn, outbox_id: int, delay_s: float, error: str) -> None:
    await conn.execute("""UPDATE alert_outbox SET attempts = attempts + 1, last_error = %s,
                              next_attempt_at = now() + make_interval(secs => %s) WHERE outbox_id = %s""",
                       (error, delay_s, outbox_id))


async def park(conn: Conn, outbox_id: int, error: str) -> None:
    await conn.execute("""UPDATE alert_outbox SET state = 'parked', parked_at = now(),
                              attempts = attempts + 1, last_error = %s WHERE outbox_id = %s""",
                       (error, outbox_id))


async def depth(conn: Conn) -> tuple[int, float]:
    """(pending rows, age in seconds of the oldest)."""
    cur = await conn.execute("""SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
                                FROM alert_outbox WHERE state = 'pending'""")
    row = await cur.fetchone()
    return (int(row[0]), float(row[1])) if row else (0, 0.0)


async def parked(conn: Conn, limit: int = 100) -> list[tuple[int, str, str, str | None]]:
    cur = await conn.execute("""SELECT outbox_id, receiver, idempotency_key, last_error FROM alert_outbox
                                WHERE state = 'parked' ORDER BY parked_at DESC LIMIT %s""", (limit,))
    return [(int(a), str(b), str(c), d) for a, b, c, d in await cur.fetchall()]


async def requeue_parked(conn: Conn, outbox_ids: Sequence[int]) -> int:
    cur = await conn.execute("""UPDATE alert_outbox SET state = 'pending', parked_at = NULL, attempts = 0,
                                    next_attempt_at = now() WHERE outbox_id = ANY(%s) AND state = 'parked'""",
                             (list(outbox_ids),))
    return cur.rowcount
