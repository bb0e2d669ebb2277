"""One MQTT 5 connection of the asyncio client: bytes in, packets out, PUBACKs in order.

``asyncio.Protocol`` rather than streams: ``data_received`` parses every complete packet of a
chunk in one pass (a QoS 1 PUBLISH costs a slice for the topic, one for the payload and one
small object), and the inbound state that must die with the connection lives here: the packet
ids in the order their PUBLISHes arrived, and the ones acknowledged by the application but not
yet sent because an earlier one is still open (MQTT 5 §4.6: PUBACKs go out in the order the
PUBLISHes were received).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from brokers.exceptions import BrokerUnavailableError, MqttProtocolError
from brokers.mqtt_packets import Connack, Packet, decode_packet, parse_publish
from brokers.mqtt_wire import PUBLISH, U16, decode_varint

log = logging.getLogger("brokers.mqtt")

# (connection, topic, payload, qos, packet id, received ns) -> None
PublishSink = Callable[["Connection", str, bytes, int, int, int], None]
ControlSink = Callable[["Connection", Packet], None]
LostSink = Callable[["Connection", "Exception | None"], None]


class Connection(asyncio.Protocol):
    def __init__(self, number: int, on_publish: PublishSink, on_control: ControlSink,
                 on_lost: LostSink) -> None:
        loop = asyncio.get_running_loop()
        self.number = number
        self._on_publish, self._on_control, self._on_lost = on_publish, on_control, on_lost
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[Connack] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.server_reason: int | None = None  # from the server's DISCONNECT, if it sent one
        self.last_rx = time.monotonic()
        self.reading_paused = False
        self.keepalive = 0  # seconds, as agreed in CONNECT/CONNACK
        self._buf = b""
        self._order: collections.deque[int] = collections.deque()
        self._done: set[int] = set()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(BrokerUnavailableError(f"connection closed before CONNACK: {exc}"))
        self._on_lost(self, exc)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data
        self.last_rx = time.monotonic()
        now_ns = time.time_ns()  # one receive time per chunk: the messages in it arrived together
        pos, n = 0, len(buf)
        try:
            while n - pos >= 2:
                first, length = buf[pos], buf[pos + 1]
                if length < 0x80:
                    start = pos + 2
                elif n - pos >= 3 and buf[pos + 2] < 0x80:  # two bytes: PUBLISHes of 128 B to 16 KiB
                    length = (length & 0x7F) | (buf[pos + 2] << 7)
                    start = pos + 3
                else:
                    got = decode_varint(buf, pos + 1)
                    if got is None:
                        break
                    length, start = got
                end = start + length
                if end > n:
                    break
                if first & 0xF0 == PUBLISH:
                    topic, payload, qos, pid = parse_publish(buf, first, start, end)
                    if qos == 2:
                        raise MqttProtocolError("QoS 2 PUBLISH on a subscription granted at most QoS 1")
                    if qos:
                        self._order.append(pid)
                    self._on_publish(self, topic, payload, qos, pid, now_ns)
                else:
                    self._on_control(self, decode_packet(first, buf[start:end]))
                pos = end
        except MqttProtocolError as exc:
            log.warning("MQTT protocol error from the broker, closing the connection: %s", exc)
            self.abort()
            return
        self._buf = buf[pos:]
        if self._done:
            self.flush_acks()

    # -- writing ---------------------------------------------------------------------------------
    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def acknowledge(self, pid: int) -> None:
        """Mark ``pid`` safe; ``flush_acks`` sends every PUBACK that is now in order."""
        self._done.add(pid)

    def flush_acks(self) -> None:
        order, done = self._order, self._done
        out: list[bytes] = []
        while order and order[0] in done:
            pid = order.popleft()
            done.discard(pid)
            out.append(b"\x40\x02" + U16.pack(pid))
        if out:
            self.write(b"".join(out))

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.last_rx = time.monotonic()  # no PINGRESP could be read while paused
            self.transport.resume_reading()
