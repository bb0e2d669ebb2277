"""Count PUBLISH packets on a topic filter (the benchmark's loss check), raw MQTT 3.1.1.

Run as a separate process so counting does not slow the publisher down:
``python loadtests/sim_subscriber.py FILTER QOS IDLE_S`` with the password in
``CITYSENSE_MQTT_BRIDGE_PASSWORD``. Prints ``ready`` once subscribed, then the
count as JSON after ``IDLE_S`` seconds without a message (or at most 120 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import sys
import time

from brokers.mqtt_wire import encode_varint as varint
from simulators.mqtt_pool import connect_packet, topic_field

HOST, PORT = "127.0.0.1", int(os.environ.get("CITYSENSE_MQTT_PORT", "18830"))


class Counter(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.count = 0
        self.last = time.monotonic()
        self.suback = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n, acks = 0, len(buf), []
        while n - pos >= 2:
            length, shift, i = 0, 0, pos + 1
            while i < n:
                b = buf[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            else:
                break
            if i + length > n:
                break
            kind = buf[pos] & 0xF0
            if kind == 0x30:
                self.count += 1
                if buf[pos] & 0x06:  # QoS 1: acknowledge
                    tlen = struct.unpack_from(">H", buf, i)[0]
                    acks.append(b"\x40\x02" + bytes(buf[i + 2 + tlen:i + 4 + tlen]))
            elif kind == 0x90 and not self.suback.done():
                self.suback.set_result(None)
            pos = i + length
        del buf[:pos]
        self.last = time.monotonic()
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))


async def main(topic_filter: str, qos: int, idle_s: float) -> None:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(Counter, HOST, PORT)
    assert proto.transport is not None
    password = os.environ["CITYSENSE_MQTT_BRIDGE_PASSWORD"]
    proto.transport.write(connect_packet(f"citysense-bench-sub-{os.getpid()}", "citysense-bridge",
                                         password, 60))
    body = b"\x00\x01" + topic_field(topic_filter) + bytes((qos,))
    proto.transport.write(b"\x82" + varint(len(body)) + body)
    await asyncio.wait_for(proto.suback, 10)
    print("ready", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < 120:
        await asyncio.sleep(0.2)
        if proto.count and time.monotonic() - proto.last > idle_s:
            break
    print(json.dumps({"received": proto.count}), flush=True)
    proto.transport.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
