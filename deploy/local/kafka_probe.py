#!/usr/bin/env python3
"""Exit 0 if the Kafka broker on 127.0.0.1:<port> answers Metadata with at least <n> brokers and a
controller (stdlib only; used by kafka.sh and kafka-cluster.sh)."""

from __future__ import annotations

import socket
import struct
import sys


def _call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes = b"") -> bytes:
    client = b"citysense-probe"
    req = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    sock.sendall(struct.pack(">i", len(req)) + req)

    def recv(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    (size,) = struct.unpack(">i", recv(4))
    resp = recv(size)
    if struct.unpack(">i", resp[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return resp[4:]


def brokers_and_controller(port: int) -> tuple[int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.settimeout(3)
        if struct.unpack(">h", _call(s, 18, 0, 1)[:2])[0] != 0:  # ApiVersions v0: error code
            raise ValueError("ApiVersions refused")
        r = _call(s, 3, 4, 2, struct.pack(">ib", 0, 0))  # Metadata v4, no topics
        pos = 4  # throttle_time_ms
        (nbrokers,) = struct.unpack_from(">i", r, pos)
        pos += 4
        for _ in range(nbrokers):
            pos += 4  # node_id
            (hl,) = struct.unpack_from(">h", r, pos)
            pos += 2 + hl + 4
            (rl,) = struct.unpack_from(">h", r, pos)
            pos += 2 + max(rl, 0)
        (cl,) = struct.unpack_from(">h", r, pos)
        pos += 2 + max(cl, 0)
        (controller,) = struct.unpack_from(">i", r, pos)
        return nbrokers, controller


if __name__ == "__main__":
    try:
        n, controller = brokers_and_controller(int(sys.argv[1]))
    except (OSError, EOFError, ValueError, struct.error):
        sys.exit(1)
    sys.exit(0 if n >= int(sys.argv[2]) and controller >= 0 else 1)
