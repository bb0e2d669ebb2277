"""The embedded broker with real MQTT clients (paho, 3.1.1 and 5) over loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from brokers.mqtt_broker import Access, BrokerConfig, MqttBroker
from simulators.scenario_registry import mosquitto_hash

USERS = {"bridge": "bridge-pw", "a1": "a1-pw", "a2": "a2-pw"}
ACL = ["user bridge", "topic read devices/#", "pattern write devices/+/%u/up"]


class Running:
    def __init__(self, config: BrokerConfig) -> None:
        access = Access(passwords={u: mosquitto_hash(pw, b"saltsaltsalt") for u, pw in USERS.items()})
        access.load_acl(ACL)
        self.broker = MqttBroker(access, config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker() -> Iterator[Running]:
    with Running(BrokerConfig(port=_free_port(), max_inflight=20, pause_at=200)) as running:
        yield running


class Client:
    def __init__(self, port: int, user: str, password: str | None = None, *, v5: bool = True,
                 client_id: str = "", persistent: bool = False, manual_ack: bool = False) -> None:
        proto = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
        kw: dict[str, Any] = {} if v5 else {"clean_session": not persistent}
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto,
                             manual_ack=manual_ack, **kw)
        self.c.username_pw_set(user, password if password is not None else USERS.get(user, "x"))
        self.got: list[paho.MQTTMessage] = []
        self.result: list[int] = []
        self.connected = threading.Event()
        self.c.on_message = lambda c, u, m: self.got.append(m)
        self.c.on_connect = self._on_connect
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600 if persistent else 0
            self.c.connect("127.0.0.1", port, keepalive=30, clean_start=not persistent, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(5), "no CONNACK"

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.result.append(int(getattr(reason, "value", reason)))
        self.connected.set()

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(5)

    def publish_all(self, topic: str, n: int, prefix: str = "m") -> None:
        infos = [self.c.publish(topic, f"{prefix}{i}".encode(), qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(10)

    def wait_for(self, n: int, timeout: float = 10) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.got) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return [bytes(m.payload) for m in self.got]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_login_acl_and_delivery(broker: Running) -> None:
    port = broker.broker.config.port
    assert Client(port, "a1", "wrong").result == [134]  # bad user name or password
    assert Client(port, "a1", "wrong", v5=False).result == [134]  # paho maps 3.1.1's code 4 to 134
    sub = Client(port, "bridge", v5=False)
    sub.subscribe("devices/#")
    dev = Client(port, "a1")
    dev.publish_all("devices/air/a2/up", 1, "foreign")  # allowed by credentials? no: a2's topic
    dev.publish_all("devices/air/a1/up", 50)
    assert sub.wait_for(50) == [f"m{i}".encode() for i in range(50)]
    assert broker.broker.stats.denied == 1
    nosy = Client(port, "a2")
    granted: list[Any] = []
    done = threading.Event()

    def on_subscribe(c: Any, u: Any, mid: int, codes: list[Any], props: Any) -> None:
        granted.extend(codes)
        done.set()

    nosy.c.on_subscribe = on_subscribe
    nosy.c.subscribe("devices/#", qos=1)  # a device may not read the others' uplinks
    assert done.wait(5)
    assert [int(code.value) for code in granted] == [0x87]
    for c in (sub, dev, nosy):
        c.close()


def test_acknowledged_messages_survive_the_publisher_leaving(broker: Running) -> None:
    """amqtt lost what it had acknowledged but not yet routed when the publisher disconnected."""
    port = broker.broker.config.port
    sub = Client(port, "bridge")
    sub.subscribe("devices/+/+/up")
    for round_ in range(5):
        dev = Client(port, "a1", v5=False)
        dev.publish_all("devices/air/a1/up", 200, f"r{round_}-")
        dev.close()
    got = sub.wait_for(1000)
    assert len(got) == 1000 and len(set(got)) == 1000
    sub.close()


def test_persistent_session_queues_and_resends_unacknowledged(broker: Running) -> None:
    port = broker.broker.config.port
    sub = Client(port, "bridge", client_id="bridge-1", persistent=True, manual_ack=True)
    sub.subscribe("$share/citysense-bridge/devices/+/+/up")
    dev = Client(port, "a1")
    dev.publish_all("devices/air/a1/up", 10, "first")
    assert len(sub.wait_for(10)) == 10
    sub.close()  # never acknowledged: the broker must send these ten again
    dev.publish_all("devices/air/a1/up", 100, "away")
    back = Client(port, "bridge", client_id="bridge-1", persistent=True)
    got = back.wait_for(110)
    assert got[:10] == [f"first{i}".encode() for i in range(10)]
    assert all(m.dup for m in back.got[:10])
    assert got[10:] == [f"away{i}".encode() for i in range(100)]
    back.close()
    dev.close()


def test_shared_subscription_splits_without_loss_or_doubles(broker: Running) -> None:
    port = broker.broker.config.port
    one, two = (Client(port, "bridge", client_id=f"b{i}") for i in (1, 2))
    for c in (one, two):
        c.subscribe("$share/g/devices/+/+/up")
    dev = Client(port, "a1")
    dev.publish_all("devices/air/a1/up", 400)
    deadline = time.monotonic() + 10
    while len(one.got) + len(two.got) < 400 and time.monotonic() < deadline:
        time.sleep(0.02)
    both = [m.payload for m in one.got + two.got]
    assert sorted(both) == sorted(f"m{i}".encode() for i in range(400))
    assert one.got and two.got
    for c in (one, two, dev):
        c.close()


def test_a_slow_subscriber_pauses_publishers_instead_of_dropping(broker: Running) -> None:
    port = broker.broker.config.port
    gate = threading.Event()
    sub = Client(port, "bridge", client_id="slow", manual_ack=True)
    acked: list[int] = []

    def on_message(c: Any, u: Any, m: paho.MQTTMessage) -> None:
        sub.got.append(m)
        def ack_later() -> None:
            gate.wait(30)
            c.ack(m.mid, m.qos)
            acked.append(m.mid)

        threading.Thread(target=ack_later, daemon=True).start()

    sub.c.on_message = on_message
    sub.subscribe("devices/#")
    dev = Client(port, "a1")
    infos = [dev.c.publish("devices/air/a1/up", b"%d" % i, qos=1) for i in range(2000)]
    deadline = time.monotonic() + 10
    while broker.broker.stats.paused == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.broker.stats.paused >= 1  # the queue passed 200: the publisher was paused
    assert len(sub.got) == 20  # the in-flight window of the slow subscriber
    gate.set()
    for info in infos:
        info.wait_for_publish(30)
    got = sub.wait_for(2000, 30)
    assert sorted(got, key=int) == [b"%d" % i for i in range(2000)]
    assert broker.broker.stats.dropped == 0
    sub.close()
    dev.close()


def test_persistent_sessions_survive_a_clean_broker_restart(tmp_path: Any) -> None:
    config = BrokerConfig(port=_free_port(), state_file=tmp_path / "sessions.json")
    with Running(config):
        sub = Client(config.port, "bridge", client_id="bridge-1", persistent=True, manual_ack=True)
        sub.subscribe("devices/+/+/up")
        dev = Client(config.port, "a1")
        dev.publish_all("devices/air/a1/up", 5, "unacked")
        assert len(sub.wait_for(5)) == 5
        sub.close()
        dev.publish_all("devices/air/a1/up", 100, "queued")
        dev.close()
    with Running(config):
        back = Client(config.port, "bridge", client_id="bridge-1", persistent=True)
        got = back.wait_for(105)
        assert got == [f"unacked{i}".encode() for i in range(5)] + [f"queued{i}".encode() for i in range(100)]
        dev = Client(config.port, "a1")
        dev.publish_all("devices/air/a1/up", 1, "after")  # the subscription came back too
        assert back.wait_for(106)[-1] == b"after0"
        back.close()
        dev.close()
