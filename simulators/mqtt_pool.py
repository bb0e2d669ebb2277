"""A lean MQTT 3.1.1 publisher over asyncio, for the load generator's connection pool.

paho builds a message object, a future and a lock round-trip per PUBLISH;
at 50,000 msg/s from one process that overhead alone is most of a core. Here
a PUBLISH is a few ``bytes`` concatenations appended to a per-connection
buffer that is written once per tick; PUBACKs are parsed in ``data_received``.
Only what a publisher needs: CONNECT (username/password, clean session),
PUBLISH QoS 0/1, PUBACK, PINGREQ/PINGRESP, DISCONNECT.

QoS 1: every packet id's send time is kept until its PUBACK, giving the
PUBACK latency; at most ``window`` PUBLISHes per connection are unacknowledged
(publishers wait, never drop). The broker answers each connection's QoS 1
PUBLISHes in order, so a lost connection fails exactly the unacknowledged ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from brokers.exceptions import BrokerError, BrokerUnavailableError
from brokers.mqtt_wire import encode_varint as varint

_U16 = struct.Struct(">H")
CONNACK, PUBACK, PINGRESP = 0x20, 0x40, 0xD0


# Fixed headers (type + remaining length) of QoS 0 / QoS 1 PUBLISHes by remaining length,
# for the lengths a load run sends (anything longer is computed).
_HDR_CACHED = 16384
_HDR0 = tuple(b"\x30" + varint(n) for n in range(_HDR_CACHED))
_HDR1 = tuple(b"\x32" + varint(n) for n in range(_HDR_CACHED))


def _str(s: str) -> bytes:
    b = s.encode()
    return _U16.pack(len(b)) + b


def connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int) -> bytes:
    flags = 0x02  # clean session
    body = _str(client_id)
    if username is not None:
        flags |= 0x80
        body += _str(username)
        if password is not None:
            flags |= 0x40
            body += _str(password)
    variable = _str("MQTT") + bytes((4, flags)) + _U16.pack(keepalive)
    rest = variable + body
    return b"\x10" + varint(len(rest)) + rest


def topic_field(topic: str) -> bytes:
    return _str(topic)


@dataclass
class PoolStats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    reconnects: int = 0
    latencies_ns: list[int] = field(default_factory=list)


class _Conn(asyncio.Protocol):
    def __init__(self, pool: MqttPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.out: list[bytes] = []
        self.inflight: dict[int, int] = {}
        self.next_pid = 1
        self.space = asyncio.Event()
        self.space.set()
        self.paused = False
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.idle = asyncio.Event()  # no QoS 1 PUBLISH awaits its PUBACK
        self.idle.set()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.stats.errors += len(self.inflight)
        self.inflight.clear()
        self.space.set()
        self.idle.set()
        self.resumed.set()
        if not self.connack.done():
            self.connack.set_exception(BrokerUnavailableError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True
        self.resumed.clear()

    def resume_writing(self) -> None:
        self.paused = False
        self.resumed.set()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n = 0, len(buf)
        stats, inflight, now = self.pool.stats, self.inflight, time.perf_counter_ns()
        while n - pos >= 2:
            kind = buf[pos] & 0xF0
            length = buf[pos + 1]  # all packets we receive are short (< 128 bytes)
            if n - pos < 2 + length:
                break
            if kind == PUBACK:
                sent = inflight.pop((buf[pos + 2] << 8) | buf[pos + 3], None)
                if sent is not None:
                    stats.acked += 1
                    stats.latencies_ns.append(now - sent)
            elif kind == CONNACK and not self.connack.done():
                self.connack.set_result(buf[pos + 3])
            pos += 2 + length
        del buf[:pos]
        if len(inflight) < self.pool.window:
            self.space.set()
            if not inflight:
                self.idle.set()

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()


class MqttPool:
    """``size`` MQTT connections; ``publish`` picks one by the caller's device index."""

    def __init__(
        self, host: str, port: int, *, username: str | None, password: str | None, size: int = 8,
        client_prefix: str = "citysense-loadgen", keepalive: int = 60, window: int = 1000,
        record_latency: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password = username, password
        self.size = size
        self.client_prefix = client_prefix
        self.keepalive = keepalive
        self.window = window
        self.record_latency = record_latency
        self.stats = PoolStats()
        self._conns: list[_Conn] = []
        self._pinger: asyncio.Task[None] | None = None

    async def _open(self, index: int) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Conn(self, index), self.host, self.port)
        except OSError as exc:
            raise BrokerUnavailableError(f"MQTT broker at {self.host}:{self.port}: {exc}") from exc
        assert conn.transport is not None
        conn.transport.write(connect_packet(f"{self.client_prefix}-{index}", self.username,
                                            self.password, self.keepalive))
        code = await asyncio.wait_for(conn.connack, 15)
        if code != 0:
            conn.transport.close()
            raise BrokerError(f"MQTT CONNACK return code {code} (bad credentials or not authorised)")
        return conn

    async def start(self) -> None:
        opened = await asyncio.gather(*(self._open(i) for i in range(self.size)), return_exceptions=True)
        self._conns = [c for c in opened if isinstance(c, _Conn)]
        failed = [c for c in opened if not isinstance(c, _Conn)]
        if failed:
            await self.stop()  # close the ones that did open
            raise failed[0]
        self._pinger = asyncio.create_task(self._ping())

    async def _ping(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 2)
            for c in self._conns:
                c.out.append(b"\xc0\x00")
                c.flush()

    def conn_for(self, device_index: int) -> int:
        return device_index % self.size

    def publish_nowait(self, conn_index: int, topic: bytes, payload: bytes, qos: int) -> bool:
        """Buffer one PUBLISH if that needs no waiting; ``False`` (nothing buffered) if it does.

        The load generator's hot path: a plain call instead of a coroutine per
        message. On ``False`` (QoS 1 window full, or the socket asked us to
        pause) await :meth:`publish`, which waits and then buffers.
        """
        c = self._conns[conn_index]
        if c.paused:
            return False
        out = c.out
        if qos:
            if len(c.inflight) >= self.window:
                return False
            pid = c.next_pid
            c.next_pid = pid % 65535 + 1
            n = len(topic) + 2 + len(payload)
            out += (_HDR1[n] if n < _HDR_CACHED else b"\x32" + varint(n), topic, _U16.pack(pid), payload)
            c.inflight[pid] = time.perf_counter_ns()
            c.idle.clear()
        else:
            n = len(topic) + len(payload)
            out += (_HDR0[n] if n < _HDR_CACHED else b"\x30" + varint(n), topic, payload)
        self.stats.sent += 1
        if len(out) >= 384:
            c.flush()
        return True

    async def publish(self, conn_index: int, topic: bytes, payload: bytes, qos: int) -> None:
        """Buffer one PUBLISH (``topic`` from :func:`topic_field`); waits only for QoS 1 window."""
        while not self.publish_nowait(conn_index, topic, payload, qos):
            c = self._conns[conn_index]
            if c.paused:
                await c.resumed.wait()
            else:  # QoS 1 window full
                c.flush()
                c.space.clear()
                await c.space.wait()
            if c.transport is None or c.transport.is_closing():
                raise BrokerUnavailableError("MQTT connection lost")

    def flush(self) -> None:
        for c in self._conns:
            c.flush()

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Write everything buffered and wait for outstanding PUBACKs (bounded)."""
        self.flush()
        waits = [e.wait() for c in self._conns for e in (c.idle, c.resumed)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)

    async def reconnect(self, conn_index: int) -> None:
        """Drop one connection and open it again (a reconnect burst follows)."""
        old = self._conns[conn_index]
        old.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(old.idle.wait(), 10)
        if old.transport is not None:
            old.transport.write(b"\xe0\x00")
            old.transport.close()
        await old.closed
        self._conns[conn_index] = await self._open(conn_index)
        self.stats.reconnects += 1

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        conns, self._conns = self._conns, []
        for c in conns:
            c.flush()
            if c.transport is not None and not c.transport.is_closing():
                c.transport.write(b"\xe0\x00")
                c.transport.close()
        await asyncio.gather(*(asyncio.wait_for(c.closed, 5) for c in conns), return_exceptions=True)

    @property
    def inflight(self) -> Sequence[int]:
        return [len(c.inflight) for c in self._conns]
