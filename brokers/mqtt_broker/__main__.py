"""``python -m brokers.mqtt_broker``: run the embedded broker as its own process until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

from brokers.mqtt_broker import Access, BrokerConfig, MqttBroker


async def serve(args: argparse.Namespace) -> None:
    access = Access.from_files(args.password_file, args.acl_file)
    if args.free_client_ids is not None:
        access.free_client_ids = frozenset(filter(None, args.free_client_ids.split(",")))
    broker = MqttBroker(access, BrokerConfig(host=args.host, port=args.port, state_file=args.state_file))
    await broker.start()
    if args.pid_file:
        args.pid_file.write_text(f"{os.getpid()}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.info("embedded MQTT broker listening on %s:%d", args.host, args.port)
    await stop.wait()
    await broker.stop()
    s = broker.stats
    logging.info("embedded MQTT broker stopped: %d received, %d denied, %d dropped, %d refused logins",
                 s.received, s.denied, s.dropped, s.refused_logins)
    if args.pid_file:
        with contextlib.suppress(OSError):
            args.pid_file.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m brokers.mqtt_broker", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--password-file", type=Path, required=True)
    ap.add_argument("--acl-file", type=Path, required=True)
    ap.add_argument("--pid-file", type=Path)
    ap.add_argument("--state-file", type=Path, help="persistent sessions are kept here across restarts")
    ap.add_argument("--free-client-ids", metavar="USER,USER",
                    help="bind client ids: every account but these must use its name as client id")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
