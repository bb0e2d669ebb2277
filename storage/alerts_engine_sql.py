"""The alert engine's writes and reads (everything inside its checkpoint transaction).

The engine calls these on one connection inside one transaction per
checkpoint: device state, alerts and their transitions, incidents and the
webhook outbox commit together, and only then are Kafka offsets committed.
Opening an alert goes through the partial unique index: if another engine
(a rebalance overlap) already opened one for the same (rule, device), this
one adopts it instead of making a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from storage.db import Conn


@dataclass(frozen=True, slots=True)
class TransitionIn:
    alert_id: int  # 0: open a new alert
    rule_id: str
    device_id: str
    site_id: str | None
    condition: str
    metric: str | None
    action: str
    from_state: str
    to_state: str
    grade: int
    value: float | None
    device_time: datetime
    labels: dict[str, str]
    flapping: bool
    suppressed: str | None
    reason: str = ""
    actor: str = "engine"


@dataclass(frozen=True, slots=True)
class TransitionOut:
    alert_id: int
    transition_id: int
    seq: int
    acknowledged: bool
    incident_id: int | None
    gone: bool = False  # the alert was resolved by hand meanwhile: nothing recorded


_OPEN = """INSERT INTO alerts (rule_id, device_id, site_id, condition, metric, state, grade, value,
        labels, flapping, suppressed, started_at, fired_at, last_seq)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
            CASE WHEN %s = 'firing' THEN %s::timestamptz END, 1)
    ON CONFLICT (rule_id, device_id) WHERE state <> 'resolved' DO NOTHING
    RETURNING alert_id, last_seq, acknowledged, incident_id"""

_UPDATE = """UPDATE alerts SET state = %(to)s, grade = %(grade)s, value = %(value)s,
        fired_at = CASE WHEN %(to)s = 'firing' THEN coalesce(fired_at, %(t)s) ELSE fired_at END,
        resolved_at = CASE WHEN %(to)s = 'resolved' THEN %(t)s END,
        resolved_by = CASE WHEN %(to)s = 'resolved' AND %(actor)s <> 'engine' THEN %(actor)s END,
        acknowledged = acknowledged AND %(action)s <> 'escalated',
        acknowledged_by = CASE WHEN %(action)s = 'escalated' THEN NULL ELSE acknowledged_by END,
        acknowledged_at = CASE WHEN %(action)s = 'escalated' THEN NULL ELSE acknowledged_at END,
        flapping = flapping OR %(flapping)s, suppressed = coalesce(%(suppressed)s, suppressed),
        last_seq = last_seq + 1, updated_at = now()
    WHERE alert_id = %(id)s AND state <> 'resolved'
    RETURNING alert_id, last_seq, acknowledged, incident_id"""

_TRANSITION = """INSERT INTO alert_transitions (alert_id, seq, action, from_state, to_state, grade,
        acknowledged, value, device_time, actor, reason)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING transition_id"""


async def record_transition(conn: Conn, t: TransitionIn) -> TransitionOut:
    row = None
    alert_id = t.alert_id
    if alert_id == 0:
        cur = await conn.execute(_OPEN, (
            t.rule_id, t.device_id, t.site_id, t.condition, t.metric, t.to_state, t.grade, t.value,
            Jsonb(t.labels), t.flapping, t.suppressed, t.device_time, t.to_state, t.device_time))
        row = await cur.fetchone()
        if row is None:  # already open (another engine's overlap, or a replay): adopt it
            cur = await conn.execute(
                "SELECT alert_id FROM alerts WHERE rule_id = %s AND device_id = %s AND state <> 'resolved'",
                (t.rule_id, t.device_id))
            found = await cur.fetchone()
            alert_id = int(found[0]) if found else 0
    if row is None:
        cur = await conn.execute(_UPDATE, {
            "to": t.to_state, "grade": t.grade, "value": t.value, "t": t.device_time, "action": t.action,
            "flapping": t.flapping, "suppressed": t.suppressed, "id": alert_id, "actor": t.actor})
        row = await cur.fetchone()
        if row is None:
            return TransitionOut(alert_id, 0, 0, False, None, gone=True)
    alert_id, seq, acknowledged, incident_id = int(row[0]), int(row[1]), bool(row[2]), row[3]
    cur = await conn.execute(_TRANSITION, (alert_id, seq, t.action, t.from_state, t.to_state, t.grade,
                                           acknowledged, t.value, t.device_time, t.actor, t.reason))
    trow = await cur.fetchone()
    assert trow is not None
    return TransitionOut(alert_id, int(trow[0]), seq, acknowledged, incident_id)


async def join_incident(conn: Conn, site_id: str, alert_id: int, grade: int, t: datetime,
                        window_s: float) -> tuple[int, str]:
    """Put a firing alert into its site's open incident (one within ``window_s`` of the
    incident's last member), or open a new one. Returns (incident_id, 'opened' | 'joined' |
    'raised'): 'raised' when this member makes the incident's grade more severe."""
    cur = await conn.execute(
        """SELECT incident_id, grade, last_seen >= %s::timestamptz - make_interval(secs => %s)
           FROM alert_incidents WHERE site_id = %s AND state = 'open' FOR UPDATE""", (t, window_s, site_id))
    row = await cur.fetchone()
    event = "joined"
    if row is not None and not row[2]:
        await conn.execute("UPDATE alert_incidents SET state = 'closed', closed_at = now(),"
                           " updated_at = now() WHERE incident_id = %s", (row[0],))
        row = None
    if row is None:
        cur = await conn.execute(
            """INSERT INTO alert_incidents (site_id, grade, first_seen, last_seen, member_count)
               VALUES (%s, %s, %s, %s, 1) RETURNING incident_id""", (site_id, grade, t, t))
        new = await cur.fetchone()
        assert new is not None
        incident_id, event = int(new[0]), "opened"
    else:
        incident_id = int(row[0])
        if grade < int(row[1]):
            event = "raised"
        await conn.execute(
            """UPDATE alert_incidents SET member_count = member_count + 1, grade = least(grade, %s),
                   last_seen = greatest(last_seen, %s), updated_at = now() WHERE incident_id = %s""",
            (grade, t, incident_id))
    await conn.execute("UPDATE alerts SET incident_id = %s WHERE alert_id = %s", (incident_id, alert_id))
    return incident_id, event


async def raise_incident(conn: Conn, incident_id: int, grade: int) -> bool:
    """A member escalated: True if that made the incident more severe."""
    cur = await conn.execute(
        "UPDATE alert_incidents SET grade = %s, updated_at = now() WHERE incident_id = %s AND grade > %s",
        (grade, incident_id, grade))
    return cur.rowcount > 0


async def close_incident_if_done(conn: Conn, incident_id: int) -> bool:
    """Close the incident when none of its members is open any more; True if closed now."""
    cur = await conn.execute(
        """UPDATE alert_incidents SET state = 'closed', closed_at = now(), updated_at = now()
           WHERE incident_id = %s AND state = 'open'
             AND NOT EXISTS (SELECT 1 FROM alerts WHERE incident_id = %s AND state <> 'resolved')""",
        (incident_id, incident_id))
    return cur.rowcount > 0


@dataclass(frozen=True, slots=True)
class OutboxIn:
    receiver: str
    device_id: str
    alert_id: int | None
    incident_id: int | None
    idempotency_key: str
    payload: dict[str, Any]
    delay_s: float = 0.0


async def enqueue(conn: Conn, rows: Sequence[OutboxIn]) -> None:
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            """INSERT INTO alert_outbox (receiver, device_id, alert_id, incident_id, idempotency_key,
                   payload, next_attempt_at)
               VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))
               ON CONFLICT (receiver, idempotency_key) DO NOTHING""",
            [(r.receiver, r.device_id, r.alert_id, r.incident_id, r.idempotency_key, Jsonb(r.payload),
              r.delay_s) for r in rows])


async def cancel_unsent_fire(conn: Conn, alert_id: int) -> int:
    """An alert resolved before its 'fired' notification left (still in group_wait):
    drop that notification; the caller then sends no 'resolved' one either."""
    cur = await conn.execute(
        """DELETE FROM alert_outbox WHERE alert_id = %s AND state = 'pending' AND attempts = 0
               AND next_attempt_at > now() AND payload->>'action' = 'fired'""", (alert_id,))
    return cur.rowcount


async def cancel_unsent_incident(conn: Conn, incident_id: int) -> int:
    """The same for an incident closed before its 'opened' notification left."""
    cur = await conn.execute(
        """DELETE FROM alert_outbox WHERE incident_id = %s AND state = 'pending' AND attempts = 0
               AND next_attempt_at > now() AND payload->>'action' = 'incident_opened'""", (incident_id,))
    return cur.rowcount


async def save_states(conn: Conn, rows: Sequence[tuple[str, int, datetime | None, bytes]]) -> None:
    """Upsert (device_id, partition, last_seen, state) rows."""
    if not rows:
        return
    await conn.execute(
        """INSERT INTO alert_device_state (device_id, partition, last_seen, state)
           SELECT * FROM unnest(%s::text[], %s::int[], %s::timestamptz[], %s::bytea[])
           ON CONFLICT (device_id) DO UPDATE SET partition = excluded.partition,
               last_seen = excluded.last_seen, state = excluded.state, updated_at = now()""",
        ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]))


async def load_states(conn: Conn, partitions: Sequence[int]) -> list[tuple[str, bytes]]:
    cur = await conn.execute(
        "SELECT device_id, state FROM alert_device_state WHERE partition = ANY(%s)", (list(partitions),))
    return [(str(d), bytes(s)) for d, s in await cur.fetchall()]


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    kind: str
    profile: str
    site_id: str | None
    district: str
    township: str
    report_interval_s: float
    tags: list[str]


async def load_devices(conn: Conn) -> list[DeviceRow]:
    cur = await conn.execute(
        """SELECT device_id, kind, profile, site_id, district, township, report_interval_s,
               CASE WHEN jsonb_typeof(metadata->'tags') = 'array'
                    THEN ARRAY(SELECT jsonb_array_elements_text(metadata->'tags')) ELSE '{}' END
           FROM devices WHERE active""")
    return [DeviceRow(*row) for row in await cur.fetchall()]


async def unpublished(conn: Conn, limit: int = 1000) -> list[dict[str, Any]]:
    """Transitions not yet on the alerts topic, oldest first, with their alert's identity."""
    cur = await conn.execute(
        """SELECT t.transition_id, t.alert_id, t.seq, t.action, t.from_state, t.to_state, t.grade,
                  t.acknowledged, t.value, t.device_time, t.actor, t.reason, t.at,
                  a.rule_id, a.device_id, a.site_id, a.condition, a.metric, a.incident_id, a.flapping,
                  a.suppressed, a.labels
           FROM alert_transitions t JOIN alerts a USING (alert_id)
           WHERE t.published_at IS NULL ORDER BY t.transition_id LIMIT %s""", (limit,))
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


async def mark_published(conn: Conn, transition_ids: Sequence[int]) -> None:
    await conn.execute("UPDATE alert_transitions SET published_at = now() WHERE transition_id = ANY(%s)",
                       (list(transition_ids),))


async def resolve_rules_gone(conn: Conn, enabled_rule_ids: Sequence[str], reason: str) -> None:
    """Resolve the open alerts of rules not among ``enabled_rule_ids`` (removed or disabled),
    each with a transition by 'system', and close the incidents left without open members."""
    cur = await conn.execute(
        """WITH gone AS (
               SELECT alert_id, state FROM alerts
               WHERE state <> 'resolved' AND rule_id <> ALL(%(ids)s::text[]) FOR UPDATE),
           closed AS (
               UPDATE alerts a SET state = 'resolved', resolved_at = now(), last_seq = a.last_seq + 1,
                      updated_at = now(), resolved_by = 'system'
               FROM gone WHERE a.alert_id = gone.alert_id
               RETURNING a.alert_id, a.last_seq, gone.state AS from_state, a.grade, a.acknowledged,
                         a.value, a.incident_id),
           recorded AS (
               INSERT INTO alert_transitions (alert_id, seq, action, from_state, to_state, grade,
                   acknowledged, value, device_time, actor, reason)
               SELECT alert_id, last_seq, CASE WHEN from_state = 'pending' THEN 'cancelled'
                      ELSE 'resolved' END, from_state, 'resolved', grade, acknowledged, value, now(),
                      'system', %(reason)s FROM closed
               RETURNING alert_id)
           SELECT DISTINCT c.incident_id FROM closed c JOIN recorded r USING (alert_id)
           WHERE c.incident_id IS NOT NULL""", {"ids": list(enabled_rule_ids), "reason": reason})
    incidents = [int(r[0]) for r in await cur.fetchall()]
    for incident_id in incidents:
        await close_incident_if_done(conn, incident_id)


async def lock_counters(conn: Conn, keys: Sequence[str]) -> dict[str, bytes]:
    """The engine-wide counter rows (partition -1) of ``keys``, locked for this transaction."""
    cur = await conn.execute(
        "SELECT device_id, state FROM alert_device_state WHERE device_id = ANY(%s) AND partition = -1"
        " ORDER BY device_id FOR UPDATE", (list(keys),))
    return {str(k): bytes(v) for k, v in await cur.fetchall()}


async def load_counters(conn: Conn, prefix: str) -> dict[str, bytes]:
    cur = await conn.execute(
        "SELECT device_id, state FROM alert_device_state WHERE partition = -1 AND starts_with(device_id, %s)",
        (prefix,))
    return {str(k): bytes(v) for k, v in await cur.fetchall()}


async def enqueue_into_batch(conn: Conn, batch: OutboxIn) -> bool:
    """Add a group batch row's notifications to the pending row of the same key (or make it).
    False if that row already left (delivered, parked or attempted): the caller sends alone."""
    cur = await conn.execute(
        """INSERT INTO alert_outbox (receiver, device_id, idempotency_key, payload, next_attempt_at)
           VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))
           ON CONFLICT (receiver, idempotency_key) DO UPDATE SET payload = jsonb_set(jsonb_set(
                   alert_outbox.payload, '{notifications}',
                   (alert_outbox.payload->'notifications') || (excluded.payload->'notifications')),
               '{idempotency_keys}',
               (alert_outbox.payload->'idempotency_keys') || (excluded.payload->'idempotency_keys'))
           WHERE alert_outbox.state = 'pending' AND alert_outbox.attempts = 0
             AND NOT (alert_outbox.payload->'idempotency_keys') @> (excluded.payload->'idempotency_keys')
           RETURNING outbox_id""",
        (batch.receiver, batch.device_id, batch.idempotency_key, Jsonb(batch.payload), batch.delay_s))
    if await cur.fetchone() is not None:
        return True
    cur = await conn.execute(  # a replay: the notification may be in that row already
        """SELECT payload->'idempotency_keys' @> %s FROM alert_outbox
           WHERE receiver = %s AND idempotency_key = %s""",
        (Jsonb(batch.payload["idempotency_keys"]), batch.receiver, batch.idempotency_key))
    row = await cur.fetchone()
    return bool(row and row[0])
