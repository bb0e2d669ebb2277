"""Sessions, the subscription tree and routing for the embedded broker.

A session outlives its connection when the client asked for that (MQTT
3.1.1 clean session 0, MQTT 5 a session expiry): its subscriptions stay in
the tree, messages for it queue, and what was sent but not acknowledged is
sent again (DUP) when it comes back. Routing is synchronous and in memory,
so a publisher's QoS 1 PUBLISH is acknowledged only after every matching
session holds the message: acknowledged means queued for each subscriber.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Protocol

from brokers.mqtt_broker.packets import Publish, publish

log = logging.getLogger(__name__)


class Link(Protocol):
    """The live connection of a session, as routing sees it."""

    version: int

    def send(self, data: bytes) -> None: ...


@dataclass(eq=False, slots=True)
class Session:
    client_id: str
    persistent: bool
    max_inflight: int
    max_queued: int
    expiry_s: float | None = None  # None: never (3.1.1 persistent, or MQTT 5 0xFFFFFFFF)
    link: Link | None = None
    disconnected_at: float | None = None
    subscriptions: dict[str, tuple[str | None, str, int]] = field(default_factory=dict)
    queue: collections.deque[tuple[Publish, int]] = field(default_factory=collections.deque)
    inflight: dict[int, tuple[Publish, int]] = field(default_factory=dict)
    next_id: int = 1
    dropped: int = 0

    def _packet_id(self) -> int:
        while True:
            pid, self.next_id = self.next_id, self.next_id % 65535 + 1
            if pid not in self.inflight:
                return pid

    def deliver(self, msg: Publish, qos: int) -> bool:
        """Send now or queue; False when the queue is full and the message was dropped."""
        link = self.link
        if link is not None and not self.queue and (qos == 0 or len(self.inflight) < self.max_inflight):
            pid = 0
            if qos:
                pid = self._packet_id()
                self.inflight[pid] = (msg, qos)
            link.send(publish(msg, qos, pid, link.version))
            return True
        if qos == 0 and link is None:
            return True  # QoS 0 is not kept for an absent client (as Mosquitto)
        if len(self.queue) >= self.max_queued:
            self.dropped += 1
            return False
        self.queue.append((msg, qos))
        return True

    def pump(self) -> None:
        """Move queued messages into the in-flight window."""
        link = self.link
        if link is None:
            return
        while self.queue and (self.queue[0][1] == 0 or len(self.inflight) < self.max_inflight):
            msg, qos = self.queue.popleft()
            pid = 0
            if qos:
                pid = self._packet_id()
                self.inflight[pid] = (msg, qos)
            link.send(publish(msg, qos, pid, link.version))

    def resume(self, link: Link) -> None:
        """A client came back: resend what it never acknowledged, in order, then the queue."""
        self.link, self.disconnected_at = link, None
        for pid, (msg, qos) in self.inflight.items():
            link.send(publish(msg, qos, pid, link.version, dup=True))
        self.pump()

    def acked(self, packet_id: int) -> None:
        if self.inflight.pop(packet_id, None) is not None:
            self.pump()


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    subscribers: dict[Session, int] = field(default_factory=dict)  # session -> QoS
    groups: dict[str, list[tuple[Session, int]]] = field(default_factory=dict)
    turn: dict[str, int] = field(default_factory=dict)


class SubscriptionTree:
    """Topic filters by level; ``route`` walks one path per topic, not every filter."""

    def __init__(self) -> None:
        self._root = _Node()

    def _node(self, topic_filter: str, create: bool) -> _Node | None:
        node = self._root
        for level in topic_filter.split("/"):
            nxt = node.children.get(level)
            if nxt is None:
                if not create:
                    return None
                nxt = node.children[level] = _Node()
            node = nxt
        return node

    def add(self, session: Session, group: str | None, topic_filter: str, qos: int) -> None:
        node = self._node(topic_filter, True)
        assert node is not None
        if group is None:
            node.subscribers[session] = qos
        else:
            members = [m for m in node.groups.get(group, []) if m[0] is not session]
            node.groups[group] = [*members, (session, qos)]

    def remove(self, session: Session, group: str | None, topic_filter: str) -> None:
        node = self._node(topic_filter, False)
        if node is None:
            return
        if group is None:
            node.subscribers.pop(session, None)
        elif group in node.groups:
            node.groups[group] = [m for m in node.groups[group] if m[0] is not session]
            if not node.groups[group]:
                del node.groups[group]
                node.turn.pop(group, None)

    def route(self, topic: str) -> dict[Session, int]:
        """Sessions a message on ``topic`` goes to, each once, with the highest QoS granted."""
        levels = topic.split("/")
        out: dict[Session, int] = {}
        self._walk(self._root, levels, 0, out, topic.startswith("$"))
        return out

    def _walk(self, node: _Node, levels: list[str], i: int, out: dict[Session, int], dollar: bool) -> None:
        wild = not (dollar and i == 0)
        hash_node = node.children.get("#") if wild else None
        if hash_node is not None:
            self._collect(hash_node, out)
        if i == len(levels):
            self._collect(node, out)
            return
        child = node.children.get(levels[i])
        if child is not None:
            self._walk(child, levels, i + 1, out, dollar)
        plus = node.children.get("+") if wild else None
        if plus is not None:
            self._walk(plus, levels, i + 1, out, dollar)

    @staticmethod
    def _collect(node: _Node, out: dict[Session, int]) -> None:
        for session, qos in node.subscribers.items():
            if out.get(session, -1) < qos:
                out[session] = qos
        for group, members in node.groups.items():
            # Round robin over the members that are connected and have room; a group whose
            # members are all away queues on the next one in turn (its session keeps it).
            start = node.turn.get(group, 0)
            chosen = members[start % len(members)]
            for k in range(len(members)):
                candidate = members[(start + k) % len(members)]
                if candidate[0].link is not None and len(candidate[0].inflight) < candidate[0].max_inflight:
                    chosen, start = candidate, start + k
                    break
            node.turn[group] = (start + 1) % len(members)
            if out.get(chosen[0], -1) < chosen[1]:
                out[chosen[0]] = chosen[1]
