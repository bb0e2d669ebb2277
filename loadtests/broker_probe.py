"""Probe an MQTT broker for what ``citysense up`` needs from an embedded one.

Starts the broker itself (``mosquitto``, ``amqtt`` from PyPI, or ``citysense``, the
project's own ``brokers/mqtt_broker``) on a
loopback port with two users (``sub`` may read ``devices/#``, ``dev-1`` may
write only ``devices/air/dev-1/up``) and checks, bounded in time:

1. an MQTT 5 CONNECT (the bridge speaks MQTT 5: shared subscriptions,
   session expiry) is accepted;
2. a wrong password is refused;
3. the ACL: ``dev-1`` publishing to another device's topic is not delivered;
4. a persistent session (clean_session=0, QoS 1) gets what was published
   while it was away, and still after a broker restart;
5. QoS 1 throughput: ``--count`` messages from the project's pooled
   publisher (MQTT 3.1.1, 4 connections) to one subscriber, msgs/s.

    python loadtests/broker_probe.py mosquitto --count 20000
    python loadtests/broker_probe.py amqtt --count 20000
    python loadtests/broker_probe.py citysense --count 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from simulators.mqtt_pool import MqttPool, topic_field
from simulators.scenario_registry import mosquitto_hash

PORT = 21990
USERS = {"sub": "sub-pw", "dev-1": "dev-pw"}


def start_broker(kind: str, work: Path) -> subprocess.Popen[bytes]:
    if kind in ("citysense", "mosquitto"):  # the project's broker reads Mosquitto's formats
        (work / "passwd").write_text(
            "".join(f"{u}:{mosquitto_hash(p, os.urandom(12))}\n" for u, p in USERS.items()))
        (work / "acl").write_text("user sub\ntopic read devices/#\npattern write devices/+/%u/up\n")
    if kind == "citysense":
        cmd = [sys.executable, "-m", "brokers.mqtt_broker", "--port", str(PORT),
               "--password-file", str(work / "passwd"), "--acl-file", str(work / "acl"),
               "--state-file", str(work / "sessions.json")]
    elif kind == "mosquitto":
        user = "user nobody\n" if os.geteuid() == 0 else ""
        (work / "m.conf").write_text(
            f"{user}listener {PORT} 127.0.0.1\nallow_anonymous false\npassword_file {work}/passwd\n"
            f"acl_file {work}/acl\nmax_queued_messages 100000\n"
            f"persistence true\npersistence_location {work}/\n")
        if os.geteuid() == 0:
            shutil.chown(work, "nobody")
            for f in work.iterdir():
                shutil.chown(f, "nobody")
        cmd = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "m.conf")]
    else:
        from pwdlib.hashers.argon2 import Argon2Hasher  # amqtt's password file format (its dep)

        (work / "passwd").write_text("".join(f"{u}:{Argon2Hasher().hash(p)}\n" for u, p in USERS.items()))
        (work / "amqtt.yaml").write_text(
            f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{PORT}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: false\n"
            f"  amqtt.plugins.authentication.FileAuthPlugin:\n    password_file: {work}/passwd\n"
            "  amqtt.plugins.topic_checking.TopicAccessControlListPlugin:\n"
            "    acl:\n      sub: ['devices/#']\n"
            "    publish_acl:\n      dev-1: ['devices/air/dev-1/up']\n      sub: []\n")
        cmd = [str(Path(sys.executable).parent / "amqtt"), "-c", str(work / "amqtt.yaml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(work / "broker.log", "ab"))  # noqa: SIM115
    time.sleep(2.0)
    return proc


def connect(user: str, password: str, *, v5: bool = False, client_id: str = "", clean: bool = True,
            received: list[bytes] | None = None) -> tuple[paho.Client, int]:
    proto = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    kw = {} if v5 else {"clean_session": clean}
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kw)
    c.username_pw_set(user, password)
    done = threading.Event()
    result: list[int] = []

    def on_connect(client: paho.Client, u: object, flags: object, reason: object, props: object) -> None:
        result.append(int(getattr(reason, "value", reason)))  # type: ignore[call-overload]
        done.set()

    c.on_connect = on_connect
    if received is not None:
        c.on_message = lambda client, u, m: received.append(m.payload)
    try:
        c.connect("127.0.0.1", PORT, keepalive=30)
    except OSError:
        return c, -1
    c.loop_start()
    done.wait(5)
    return c, result[0] if result else -2


def wait_count(box: list[bytes], n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while len(box) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(box)


async def throughput(count: int, received: list[bytes], linger_s: float) -> float:
    pool = MqttPool("127.0.0.1", PORT, username="dev-1", password="dev-pw", size=4)
    await pool.start()
    topic = topic_field("devices/air/dev-1/up")
    start = time.monotonic()
    for i in range(count):
        if not pool.publish_nowait(i % 4, topic, b"x" * 200, 1):
            await pool.publish(i % 4, topic, b"x" * 200, 1)
        if i % 500 == 0:
            pool.flush()
            await asyncio.sleep(0)
    pool.flush()
    await pool.drain(timeout_s=60)
    # How long the publishers stay connected after their last PUBACK: 0 finds a broker that
    # acknowledges before routing and drops what is unrouted when the publisher leaves (amqtt).
    await asyncio.sleep(linger_s)
    await pool.stop()
    got = wait_count(received, count, 30)
    return got / (time.monotonic() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("broker", choices=["mosquitto", "amqtt", "citysense"])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--linger-s", type=float, default=0.0,
                    help="publishers stay connected this long after their last PUBACK")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="broker-probe-"))
    os.chmod(work, 0o755)  # noqa: S103 - the broker may run as nobody
    proc = start_broker(args.broker, work)
    try:
        c, rc = connect("sub", "sub-pw", v5=True)
        c.loop_stop(), c.disconnect()
        print(f"MQTT 5 CONNECT: {'accepted' if rc == 0 else f'refused/failed ({rc})'}")
        c, rc = connect("sub", "wrong")
        c.loop_stop(), c.disconnect()
        print(f"wrong password: {'refused' if rc != 0 else 'ACCEPTED'} ({rc})")
        box: list[bytes] = []
        sub, rc = connect("sub", "sub-pw", client_id="probe-sub", clean=False, received=box)
        sub.subscribe("devices/#", qos=1)
        time.sleep(0.5)
        dev, _ = connect("dev-1", "dev-pw")
        dev.publish("devices/air/dev-2/up", b"foreign", qos=1).wait_for_publish(5)
        dev.publish("devices/air/dev-1/up", b"own", qos=1).wait_for_publish(5)
        wait_count(box, 2, 2)
        print(f"ACL: own topic delivered={b'own' in box}, other device's topic delivered={b'foreign' in box}")
        sub.loop_stop(), sub.disconnect()
        box.clear()
        for i in range(100):
            dev.publish("devices/air/dev-1/up", b"away-%d" % i, qos=1).wait_for_publish(5)
        sub, _ = connect("sub", "sub-pw", client_id="probe-sub", clean=False, received=box)
        print(f"persistent session: {wait_count(box, 100, 5)}/100 queued messages after reconnect")
        sub.loop_stop(), sub.disconnect()
        box.clear()
        for i in range(100):
            dev.publish("devices/air/dev-1/up", b"restart-%d" % i, qos=1).wait_for_publish(5)
        dev.loop_stop(), dev.disconnect()
        proc.terminate(), proc.wait(10)
        proc = start_broker(args.broker, work) if args.broker != "mosquitto" else subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(work / "m.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        sub, _ = connect("sub", "sub-pw", client_id="probe-sub", clean=False, received=box)
        print(f"persistent session across a broker restart: {wait_count(box, 100, 5)}/100")
        sub.loop_stop(), sub.disconnect()
        box.clear()
        sub, _ = connect("sub", "sub-pw", client_id="probe-tp", received=box)
        sub.subscribe("devices/#", qos=1)
        time.sleep(0.5)
        rate = asyncio.run(throughput(args.count, box, args.linger_s))
        print(f"QoS 1 throughput: {len(box)}/{args.count} delivered, {rate:.0f} msgs/s end to end")
        sub.loop_stop(), sub.disconnect()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.returncode not in (0, -15):
            print((work / "broker.log").read_text()[-3000:])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
