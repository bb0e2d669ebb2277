"""Per-rule rate-limit counters that survive a restart.

A rule's ``rate_limit`` counts the notifications it sent (over all devices)
in a sliding window of the engine's clock. The send times of the rules that
sent something are written in the checkpoint transaction, beside the device
state (``alert_device_state`` rows ``#rate:<rule_id>``, partition -1, which no
partition load picks up), merged with what is there (another instance's sends
count too), and read back when the engine loads its rules. A checkpoint that
rolls back takes its sends out of the counters again, so a retry does not
count them twice.
"""

from __future__ import annotations

import contextlib
from collections import deque

import msgspec

from storage import alerts_engine_sql as q
from storage.db import Conn

PREFIX = "#rate:"
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[int])


class RateCounters:
    def __init__(self) -> None:
        self._sent: dict[str, deque[int]] = {}
        self._new: list[tuple[str, int]] = []  # sends of the checkpoint in progress

    def count(self, rule_id: str, now_ns: int, window_ns: int) -> int:
        sent = self._sent.get(rule_id)
        if not sent:
            return 0
        while sent and sent[0] <= now_ns - window_ns:
            sent.popleft()
        return len(sent)

    def sent(self, rule_id: str, now_ns: int) -> None:
        self._sent.setdefault(rule_id, deque()).append(now_ns)
        self._new.append((rule_id, now_ns))

    def rolled_back(self) -> None:
        for rule_id, t in self._new:
            with contextlib.suppress(ValueError):
                self._sent[rule_id].remove(t)
        self._new.clear()

    def committed(self) -> None:
        self._new.clear()

    async def save(self, conn: Conn, windows_ns: dict[str, int], now_ns: int) -> None:
        """Inside the checkpoint transaction: the stored send times (every instance's) plus this
        checkpoint's become the rule's counter, here and in the database."""
        new = self._new
        rules = sorted({r for r, _ in new})
        if not rules:
            return
        stored = await q.lock_counters(conn, [PREFIX + r for r in rules])
        rows = []
        for rule_id in rules:
            horizon = now_ns - windows_ns.get(rule_id, 0)
            blob = stored.get(PREFIX + rule_id)
            merged = sorted(t for t in (*(_decoder.decode(blob) if blob else ()),
                                        *(t for r, t in new if r == rule_id)) if t > horizon)
            self._sent[rule_id] = deque(merged)
            rows.append((PREFIX + rule_id, -1, None, _encoder.encode(merged)))
        await q.save_states(conn, rows)

    async def load(self, conn: Conn) -> None:
        for key, blob in (await q.load_counters(conn, PREFIX)).items():
            self._sent[key.removeprefix(PREFIX)] = deque(_decoder.decode(blob))
