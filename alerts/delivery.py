"""The webhook delivery worker: outbox -> receivers, at least once, in order per device.

Each attempt POSTs the JSON payload with an ``Idempotency-Key`` (one per
alert transition or incident event: a receiver seeing a key twice has seen
the same notification twice) and ``X-Citysense-Signature: sha256=<HMAC of
timestamp.body>`` keyed by the receiver's secret from the environment. A 2xx
delivers; a 4xx (other than 408/429) will never succeed and is parked with
its reason; 5xx, 408, 429, timeouts and connection errors retry with
exponential backoff and full jitter until ``deliver_max_attempts``, then park.
Parked rows stay visible (``citysense alerts parked``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections import defaultdict

import httpx
from psycopg_pool import AsyncConnectionPool

from alerts.metrics import AlertMetrics
from alerts.notify import receiver_url
from alerts.rules import Receiver, from_definition
from alerts.settings import AlertSettings
from storage import alert_rules_store
from storage import alerts_outbox_sql as q

log = logging.getLogger(__name__)
RETRIABLE_4XX = {408, 425, 429}


def backoff_s(attempts: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempts)] (never quite zero)."""
    return max(0.05, random.uniform(0, min(cap, base * 2 ** attempts)))


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Delivery:
    def __init__(self, pool: AsyncConnectionPool, settings: AlertSettings,
                 metrics: AlertMetrics | None = None) -> None:
        self._pool = pool
        self._s = settings
        self.metrics = metrics or AlertMetrics()
        self._stopping = asyncio.Event()
        self._receivers: dict[str, Receiver] = {}

    def request_stop(self) -> None:
        self._stopping.set()

    async def _load_receivers(self) -> None:
        async with self._pool.connection() as conn:
            rows = await alert_rules_store.list_rules(conn)
        receivers: dict[str, Receiver] = {}
        for row in rows:
            for r in from_definition(row.definition)[1]:
                receivers[r.name] = r
        self._receivers = receivers

    async def run(self) -> None:
        async with httpx.AsyncClient() as client:
            loaded = 0.0
            while not self._stopping.is_set():
                if time.monotonic() - loaded > 5:
                    await self._load_receivers()
                    loaded = time.monotonic()
                sent = await self.deliver_once(client)
                if not sent:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self._s.deliver_poll_s)

    async def deliver_once(self, client: httpx.AsyncClient) -> int:
        """Claim and attempt one round of deliverable rows; returns how many were attempted."""
        if not self._receivers:
            await self._load_receivers()
        async with self._pool.connection() as conn, conn.transaction():
            rows = await q.claim(conn, self._s.deliver_batch)
            queues: dict[tuple[str, str], list[q.OutboxRow]] = defaultdict(list)
            for row in rows:
                queues[(row.receiver, row.device_id)].append(row)
            for row in rows:
                grouped = row.payload.get("notifications") if row.payload.get("kind") == "group" else None
                for payload in grouped or [row.payload]:  # a group_interval batch: each incident in it
                    if payload.get("kind") == "incident" and payload.get("incident_id") is not None:
                        count, members = await q.incident_members(conn, int(payload["incident_id"]))
                        payload.update(member_count=count, members=members)
            outcomes = await asyncio.gather(*(self._send_queue(client, queue) for queue in queues.values()))
            for outcome in outcomes:
                for row, verdict, error in outcome:
                    self.metrics.notifications.labels(verdict).inc()
                    if verdict == "delivered":
                        await q.delivered(conn, row.outbox_id)
                    elif verdict == "parked":
                        await q.park(conn, row.outbox_id, error)
                        log.warning("notification %s to %s parked: %s", row.idempotency_key,
                                    row.receiver, error)
                    else:
                        delay = backoff_s(row.attempts, self._s.deliver_backoff_base_s,
                                          self._s.deliver_backoff_max_s)
                        await q.retry_later(conn, row.outbox_id, delay, error)
            depth, age = await q.depth(conn)
            self.metrics.outbox_depth.set(depth)
            self.metrics.outbox_age.set(age)
        return len(rows)

    async def _send_queue(self, client: httpx.AsyncClient,
                          queue: list[q.OutboxRow]) -> list[tuple[q.OutboxRow, str, str]]:
        """One (receiver, device) queue in order; a failure stops the rest of it (order)."""
        out: list[tuple[q.OutboxRow, str, str]] = []
        for row in queue:
            verdict, error = await self._send(client, row)
            out.append((row, verdict, error))
            if verdict != "delivered":
                break
        return out

    async def _send(self, client: httpx.AsyncClient, row: q.OutboxRow) -> tuple[str, str]:
        receiver = self._receivers.get(row.receiver)
        url = receiver_url(receiver) if receiver else None
        if receiver is None or url is None:
            return "parked", f"receiver {row.receiver!r} has no url (unknown receiver or its url_env unset)"
        secret = os.environ.get(receiver.secret_env)
        if not secret:
            return "parked", f"no signing secret: environment variable {receiver.secret_env} is unset"
        body = json.dumps(row.payload, separators=(",", ":"), default=str).encode()
        stamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "Idempotency-Key": row.idempotency_key,
                   "X-Citysense-Timestamp": stamp, "X-Citysense-Signature": signature(secret, stamp, body)}
        try:
            response = await client.post(url, content=body, headers=headers, timeout=receiver.timeout_s)
        except httpx.HTTPError as exc:
            return self._retry_or_park(row, f"{type(exc).__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return "delivered", ""
        reason = f"HTTP {response.status_code}: {response.text[:200]}"
        if 400 <= response.status_code < 500 and response.status_code not in RETRIABLE_4XX:
            return "parked", reason
        return self._retry_or_park(row, reason)

    def _retry_or_park(self, row: q.OutboxRow, reason: str) -> tuple[str, str]:
        if row.attempts + 1 >= self._s.deliver_max_attempts:
            return "parked", f"gave up after {row.attempts + 1} attempts: {reason}"
        return "retry", reason
