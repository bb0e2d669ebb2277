"""What the asyncio MQTT client sends and waits for: PUBLISH → PUBACK, SUBSCRIBE → SUBACK.

Kept across connections: unacknowledged QoS 1 PUBLISHes are re-sent (DUP) after a reconnect,
as the session requires, and every subscription is made again. The bridge publishes little here
(its canaries and echoes); bulk publishing is the load generator's pool (``simulators/mqtt_pool.py``).
"""

from __future__ import annotations

import asyncio
import logging

from brokers.exceptions import BrokerError, BrokerUnavailableError
from brokers.mqtt_connection import Connection
from brokers.mqtt_packets import Puback, Publish, Suback, Subscribe, encode_publish, encode_subscribe
from brokers.mqtt_wire import RETAIN_DO_NOT_SEND, reason_name

log = logging.getLogger("brokers.mqtt")


class Outbound:
    def __init__(self) -> None:
        self.subscriptions: list[tuple[str, int]] = []
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._publishes: dict[int, tuple[bytes, asyncio.Future[None]]] = {}
        self._next_pid = 0

    def _pid(self) -> int:
        for _ in range(65_535):
            self._next_pid = self._next_pid % 65_535 + 1
            if self._next_pid not in self._publishes and self._next_pid not in self._subacks:
                return self._next_pid
        raise BrokerError("no free MQTT packet identifier (65,535 PUBLISHes await their PUBACK)")

    def publish(self, conn: Connection | None, topic: str, payload: bytes, qos: int,
                retain: bool) -> asyncio.Future[None]:
        if qos not in (0, 1):
            raise BrokerError(f"QoS {qos} is not supported by the asyncio MQTT client")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if qos == 0:
            if conn is not None and conn.write(encode_publish(Publish(topic, payload, 0, 0, retain))):
                fut.set_result(None)
            else:
                fut.set_exception(BrokerUnavailableError(f"publish to {topic}: not connected"))
            return fut
        pid = self._pid()
        packet = encode_publish(Publish(topic, payload, 1, pid, retain))
        self._publishes[pid] = (packet, fut)  # while disconnected: sent after the reconnect
        if conn is not None:
            conn.write(packet)
        return fut

    def subscribe(self, conn: Connection | None, topic: str, qos: int) -> asyncio.Future[None]:
        self.subscriptions.append((topic, qos))
        if conn is None:
            raise BrokerUnavailableError(f"subscribe {topic}: not connected (sent after the reconnect)")
        return self._subscribe(conn, ((topic, qos),))

    def _subscribe(self, conn: Connection, filters: tuple[tuple[str, int], ...]) -> asyncio.Future[None]:
        pid = self._pid()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subacks[pid] = fut
        # Retained messages are never sent on (re-)subscribe: a retained uplink is a message a device
        # published once, and must be ingested once, not again at every bridge reconnect.
        conn.write(encode_subscribe(Subscribe(pid, tuple((t, q | RETAIN_DO_NOT_SEND) for t, q in filters))))
        return fut

    def connected(self, conn: Connection) -> None:
        if self.subscriptions:  # again after a reconnect
            fut = self._subscribe(conn, tuple(self.subscriptions))
            fut.add_done_callback(_log_refused)
        for packet, _ in self._publishes.values():  # unacknowledged on the last connection: DUP
            conn.write(bytes((packet[0] | 0x08,)) + packet[1:])

    def lost(self, exc: Exception | None) -> None:
        subacks, self._subacks = self._subacks, {}
        for fut in subacks.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailableError(f"MQTT connection lost before SUBACK: {exc}"))

    def stopped(self) -> None:
        publishes, self._publishes = self._publishes, {}
        for _, fut in publishes.values():
            if not fut.done():
                fut.set_exception(BrokerUnavailableError("MQTT client stopped before PUBACK"))

    def puback(self, packet: Puback) -> None:
        _, fut = self._publishes.pop(packet.packet_id, (b"", None))
        if fut is None or fut.done():
            return
        if packet.reason_code >= 0x80:
            fut.set_exception(BrokerError(
                f"PUBLISH mid={packet.packet_id} refused, reason code {packet.reason_code:#x}"))
        else:
            fut.set_result(None)

    def suback(self, packet: Suback) -> None:
        fut = self._subacks.pop(packet.packet_id, None)
        if fut is None or fut.done():
            return
        failed = [f"{reason_name(c)} (reason code {c:#x})" for c in packet.reason_codes if c >= 0x80]
        if failed:
            fut.set_exception(BrokerError(f"subscription refused: {'; '.join(failed)}"))
        else:
            fut.set_result(None)


def _log_refused(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("MQTT re-subscription after a reconnect failed: %s", fut.exception())
