"""``group_interval``: after a group's first notification, more of it go out together.

A group is (receiver, grouping labels): the rule and the site for an alert's
own notifications (``rule:<id>@<site>``), the site for incident events
(``site:<id>``). The first notification of a group leaves after
``group_wait``, as before. A notification of the same group within
``group_interval`` of the group's last send joins ONE outbox row due at the
end of that interval (``kind: group``, the notifications in order inside,
each with its own idempotency key), so a receiver hears from a group at most
once per ``group_interval``. After the interval a notification leaves at
once and starts the next interval.

Every row of a group (single or batch) carries the group as its ordering
key, so the delivery worker keeps a group's notifications in order (and so a
device's notifications of one rule). The intervals live in memory: after a
restart a group's next notification leaves at once (sooner, never lost). An
alert that resolves while its 'fired' sits in a batch is not taken out of
it: the batch then says both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from alerts.lifecycle import NS
from storage import alerts_engine_sql as q
from storage.db import Conn


@dataclass(slots=True)
class _Group:
    free_ns: int  # a notification from here on leaves on its own
    batch_ns: int = 0  # due time of the batch row being filled (0: none)


def group_of(row: q.OutboxIn) -> str:
    if row.device_id.startswith("site:"):
        return row.device_id  # an incident event: the site is the group
    site = row.payload.get("site_id")
    return f"rule:{row.payload.get('rule_id')}" + (f"@{site}" if site else "")


class Grouper:
    def __init__(self, interval_s: float, clock: Callable[[], int]) -> None:
        self.interval_ns = int(interval_s * NS)
        self._clock = clock
        self._groups: dict[tuple[str, str], _Group] = {}
        self._undo: dict[tuple[str, str], _Group | None] = {}  # before the checkpoint in progress

    def committed(self) -> None:
        self._undo.clear()

    def rolled_back(self) -> None:
        """The checkpoint did not commit: its rows are not there, so neither are its sends."""
        for key, before in self._undo.items():
            if before is None:
                self._groups.pop(key, None)
            else:
                self._groups[key] = before
        self._undo.clear()

    async def place(self, conn: Conn, rows: list[q.OutboxIn]) -> list[q.OutboxIn]:
        """Enqueue ``rows`` (inside the checkpoint), singly or into their group's batch."""
        if not self.interval_ns:
            await q.enqueue(conn, rows)
            return rows
        now, out = self._clock(), []
        for row in rows:
            g = group_of(row)
            state = self._groups.get((row.receiver, g))
            if (row.receiver, g) not in self._undo:
                self._undo[(row.receiver, g)] = replace(state) if state is not None else None
            if state is not None and now < state.batch_ns:
                slot = state.batch_ns  # the batch being filled takes it
            elif state is not None and now < state.free_ns:
                slot = state.batch_ns = state.free_ns  # a new batch at the end of the interval
                state.free_ns = slot + self.interval_ns
            else:
                single = replace(row, device_id=g)
                await q.enqueue(conn, [single])
                out.append(single)
                self._groups[(row.receiver, g)] = _Group(now + int(row.delay_s * NS) + self.interval_ns)
                continue
            batch = q.OutboxIn(row.receiver, g, None, None, f"group:{g}:{slot}", {
                "version": 1, "kind": "group", "group": g, "notifications": [row.payload],
                "idempotency_keys": [row.idempotency_key]}, (slot - now) / NS)
            if not await q.enqueue_into_batch(conn, batch):  # already sent: this one goes alone
                single = replace(row, device_id=g, delay_s=0.0)
                await q.enqueue(conn, [single])
                batch = single
            out.append(batch)
        return out
