"""The asyncio MQTT client against a scripted broker on loopback: what goes on the wire, in order.

A marker PUBLISH (QoS 0, written after the action under test) proves what was *not* sent: the
stream is ordered, so if the broker reads the marker next, nothing came before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from brokers.exceptions import BrokerError
from brokers.mqtt_asyncio import AsyncioMqttClient
from brokers.mqtt_base import InboundMessage, MqttConfig
from brokers.mqtt_connection import Connection
from brokers.mqtt_packets import (
    Connack,
    Connect,
    Disconnect,
    Packet,
    Ping,
    Puback,
    Publish,
    Suback,
    Subscribe,
    decode_packet,
    encode_connack,
    encode_disconnect,
    encode_puback,
    encode_publish,
    encode_suback,
)
from brokers.mqtt_wire import RECEIVE_MAXIMUM, SESSION_EXPIRY, prop, split_frame


class Peer:
    """The broker's end of one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self._buf = reader, writer, b""

    async def read(self) -> Packet:
        while True:
            frame = split_frame(self._buf)
            if frame is not None:
                first, start, end = frame
                body, self._buf = self._buf[start:end], self._buf[end:]
                packet = decode_packet(first, body)
                if not isinstance(packet, Ping):  # keepalive is not what these tests look at
                    return packet
                continue
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "client closed the connection"
            self._buf += data

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def accept(self, session_present: bool = False) -> Connect:
        connect = await self.read()
        assert isinstance(connect, Connect)
        self.send(encode_connack(Connack(session_present, 0)))
        return connect


@asynccontextmanager
async def broker() -> AsyncIterator[tuple[str, asyncio.Queue[Peer]]]:
    peers: asyncio.Queue[Peer] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await peers.put(Peer(reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"mqtt://127.0.0.1:{port}", peers
    finally:
        server.close()


async def subscribed(client: AsyncioMqttClient, peer: Peer, topic: str) -> Subscribe:
    task = asyncio.create_task(client.subscribe(topic, qos=1))
    sub = await peer.read()
    assert isinstance(sub, Subscribe)
    peer.send(encode_suback(Suback(sub.packet_id, (1,))))
    await task
    return sub


async def marker(client: AsyncioMqttClient, peer: Peer) -> Packet:
    await client.publish("marker", b"", qos=0)
    return await peer.read()


async def test_session_backpressure_and_pubacks_in_the_order_publishes_arrived() -> None:
    async with broker() as (url, peers):
        client = AsyncioMqttClient(MqttConfig(url=url, client_id="b1", username="u", password="p",
                                              clean_start=False, session_expiry_s=60, max_unacked_inbound=3),
                                   manual_ack=True)
        start = asyncio.create_task(client.start())
        peer = await peers.get()
        connect = await peer.accept()
        await start
        assert (connect.client_id, connect.username, connect.password) == ("b1", "u", "p")
        assert not connect.clean_start
        assert prop(connect.properties, SESSION_EXPIRY) == 60
        assert prop(connect.properties, RECEIVE_MAXIMUM) == 3
        sub = await subscribed(client, peer, "$share/g/devices/+/+/up")
        assert sub.filters == (("$share/g/devices/+/+/up", 1 | 2 << 4),)  # QoS 1, retained: don't send

        for pid in (1, 2, 3):
            peer.send(encode_publish(Publish(f"devices/air/a-{pid}/up", b"%d" % pid, 1, pid)))
        got: list[InboundMessage] = []
        while len(got) < 3:
            got += await client.receive_batch(10, 5)
        assert [(m.topic, m.payload, m.mid) for m in got] == [
            (f"devices/air/a-{i}/up", b"%d" % i, i) for i in (1, 2, 3)]

        client.ack([got[2]])  # the last first: its PUBACK must wait for the two before it
        assert isinstance(await marker(client, peer), Publish)
        client.ack([got[0]])
        assert await peer.read() == Puback(1)
        client.ack([got[1]])
        assert [await peer.read(), await peer.read()] == [Puback(2), Puback(3)]
        await client.stop()
        assert await peer.read() == Disconnect(0)


async def test_a_refused_login_raises_and_is_reported() -> None:
    events: list[tuple[str, int, str]] = []
    async with broker() as (url, peers):
        client = AsyncioMqttClient(MqttConfig(url=url, username="u", password="wrong"), manual_ack=True,
                                   on_connection=lambda *e: events.append(e))
        start = asyncio.create_task(client.start())
        peer = await peers.get()
        assert isinstance(await peer.read(), Connect)
        peer.send(encode_connack(Connack(False, 0x86)))
        with pytest.raises(BrokerError, match="connect refused: Bad User Name or Password"):
            await start
    assert events == [("refused", 0x86, "Bad User Name or Password")]


async def test_after_a_lost_connection_it_reconnects_and_never_acks_the_old_connections_ids() -> None:
    events: list[tuple[str, int, str]] = []
    async with broker() as (url, peers):
        config = MqttConfig(url=url, clean_start=False, session_expiry_s=60, reconnect_max_s=1)
        client = AsyncioMqttClient(config, manual_ack=True, on_connection=lambda *e: events.append(e))
        start = asyncio.create_task(client.start())
        first = await peers.get()
        await first.accept()
        await start
        await subscribed(client, first, "devices/+/+/up")
        first.send(encode_publish(Publish("devices/air/a-1/up", b"old", 1, 7)))
        [old] = await client.receive_batch(10, 5)
        canary = client.publish("devices/_canary/x/up", b"c", qos=1)
        assert isinstance(await first.read(), Publish)
        first.send(encode_disconnect(Disconnect(0x8E)))  # session taken over
        first.writer.close()

        second = await peers.get()
        await second.accept(session_present=True)
        resub, resent = await second.read(), await second.read()
        assert isinstance(resub, Subscribe) and resub.filters == (("devices/+/+/up", 1 | 2 << 4),)
        assert isinstance(resent, Publish) and resent.dup and resent.topic == "devices/_canary/x/up"
        second.send(encode_puback(Puback(resent.packet_id)))
        await canary

        client.ack([old])  # id 7 belongs to the old connection: the broker re-sends it here
        assert isinstance(await marker(client, second), Publish)
        second.send(encode_publish(Publish("devices/air/a-1/up", b"old", 1, 7, dup=True)))
        [again] = await client.receive_batch(10, 5)
        client.ack([again])
        assert await second.read() == Puback(7)
        await client.stop()
    assert [e[0] for e in events] == ["connected", "disconnected", "connected", "disconnected"]
    assert events[1] == ("disconnected", 0x8E, "Session taken over")
    assert client.disconnects == 2


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
async def test_packets_split_anywhere_across_reads_are_parsed_whole(chunk: int) -> None:
    """Remaining lengths of one, two and three bytes, cut at every possible place."""
    sizes = (10, 300, 20_000)
    wire = b"".join(encode_publish(Publish(f"devices/air/a-{i}/up", bytes([i]) * n, 1, i + 1))
                    for i, n in enumerate(sizes)) + b"\xd0\x00"  # and a PINGRESP
    got: list[tuple[str, bytes, int, int]] = []
    controls: list[Packet] = []
    conn = Connection(1, lambda _c, topic, payload, qos, pid, _ns: got.append((topic, payload, qos, pid)),
                      lambda _c, packet: controls.append(packet), lambda _c, _e: None)
    for i in range(0, len(wire), chunk):
        conn.data_received(wire[i:i + chunk])
    assert got == [(f"devices/air/a-{i}/up", bytes([i]) * n, 1, i + 1) for i, n in enumerate(sizes)]
    assert controls == [Ping(True)]
