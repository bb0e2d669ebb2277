"""The embedded broker: listener, sessions by client id, routing and backpressure.

Backpressure instead of loss: when a connected subscriber's queue passes
``pause_at`` messages, every connection that publishes into it stops being
read (the kernel's socket buffers and then TCP hold the publishers) until
the queue is back under half of that. Only a session whose client is away
can overflow (``max_queued``); those drops are counted, as Mosquitto's are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from brokers.mqtt_broker import packets as p
from brokers.mqtt_broker import persistence
from brokers.mqtt_broker.access import Access
from brokers.mqtt_broker.connection import Connection
from brokers.mqtt_broker.sessions import Session, SubscriptionTree

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BrokerStats:
    connections: int = 0
    refused_logins: int = 0
    received: int = 0
    denied: int = 0  # PUBLISHes the ACL refused
    dropped: int = 0  # messages an absent client's full queue could not take
    paused: int = 0  # times a publisher was paused for a slow subscriber


@dataclass
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    max_packet: int = 262_144
    max_inflight: int = 1000
    max_queued: int = 100_000
    pause_at: int = 20_000
    connect_timeout_s: float = 10.0
    state_file: Path | None = None  # persistent sessions kept across a clean restart


@dataclass
class MqttBroker:
    access: Access
    config: BrokerConfig = field(default_factory=BrokerConfig)
    stats: BrokerStats = field(default_factory=BrokerStats)

    def __post_init__(self) -> None:
        self.tree = SubscriptionTree()
        self.sessions: dict[str, Session] = {}
        self.links: set[Connection] = set()
        self.paused: set[Connection] = set()
        self.pressing: set[Session] = set()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._assigned = 0

    async def start(self) -> None:
        if self.config.state_file is not None:
            self.sessions = persistence.load(self.config.state_file, self.tree)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), self.config.host, self.config.port)
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._ticker:
            self._ticker.cancel()
        for link in list(self.links):
            link.close(p.disconnect(link.version, 0x8B))  # server shutting down
            link.connection_lost(None)
        await server.wait_closed()
        if self.config.state_file is not None:
            held = persistence.save(self.sessions, self.config.state_file)
            log.info("embedded broker: %d persistent sessions saved, holding %d messages",
                     sum(s.persistent for s in self.sessions.values()), held)

    def assign_id(self) -> str:
        self._assigned += 1
        return f"citysense-auto-{self._assigned}-{time.monotonic_ns() % 1_000_000}"

    def publish(self, source: Connection | None, msg: p.Publish) -> None:
        """Route one message to every matching session (in memory, before any PUBACK)."""
        self.stats.received += 1
        pause_at = self.config.pause_at
        for session, granted in self.tree.route(msg.topic).items():
            if not session.deliver(msg, min(msg.qos, granted)):
                self._dropped(session)
            elif session.link is not None and len(session.queue) > pause_at:
                self.pressing.add(session)
            # Never pause the client whose own queue is full: it could not send its PUBACKs.
            if source is not None and session in self.pressing and source.session not in self.pressing:
                source.pause()

    def _dropped(self, session: Session) -> None:
        self.stats.dropped += 1
        if session.dropped in (1, 10, 100) or session.dropped % 10_000 == 0:
            log.warning("embedded broker: queue of absent client %s is full (%d messages); "
                        "%d dropped", session.client_id, len(session.queue), session.dropped)

    def queued(self, session: Session) -> None:
        """Called after a session's queue changed: start or end backpressure."""
        backlog = len(session.queue)
        if session.link is not None and backlog > self.config.pause_at:
            self.pressing.add(session)
        elif session in self.pressing and (session.link is None or backlog < self.config.pause_at // 2):
            self.pressing.discard(session)
            if not self.pressing:
                for link in list(self.paused):
                    link.resume()

    def end_session(self, session: Session) -> None:
        for group, topic_filter, _ in session.subscriptions.values():
            self.tree.remove(session, group, topic_filter)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        self.pressing.discard(session)
        self.queued(session)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for link in list(self.links):
                link.check_alive(now)
            for session in list(self.sessions.values()):
                if (session.link is None and session.expiry_s is not None
                        and session.disconnected_at is not None
                        and now - session.disconnected_at >= session.expiry_s):
                    self.end_session(session)
