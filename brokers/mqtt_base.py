"""The MQTT client contract the bridge depends on, and what both implementations share.

Two clients implement :class:`MqttClientApi`: ``brokers.mqtt.MqttClient`` (paho-mqtt 2, its
network loop in a thread) and ``brokers.mqtt_asyncio.AsyncioMqttClient`` (MQTT 5 on the event
loop, ``brokers/mqtt_wire.py``). ``make_mqtt_client`` picks one by name; the bridge's setting
``CITYSENSE_BRIDGE_MQTT_CLIENT`` chooses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

from brokers.exceptions import BrokerError

# Called on every connection change: (event, reason code, reason name), event one of
# "connected", "refused", "disconnected". paho calls it from its thread, the asyncio client
# from the event loop.
ConnectionListener = Callable[[str, int, str], None]
SideHandler = Callable[[str, bytes], None]
MqttClientKind = Literal["asyncio", "paho"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttConfig:
    url: str = "mqtt://127.0.0.1:18830"
    username: str | None = None
    password: str | None = None
    client_id: str = field(default_factory=lambda: f"citysense-{uuid.uuid4().hex[:12]}")
    clean_start: bool = True
    session_expiry_s: int = 0
    keepalive_s: int = 30
    max_inflight: int = 1000
    max_unacked_inbound: int = 5000
    # The reconnect back-off doubles up to this; paho's default (120 s) would leave a bridge away
    # for minutes after a broker restart while its queue grows.
    reconnect_max_s: int = 5
    # mqtts:// : the CA that signed the broker's certificate (None: the system's CAs), and an
    # optional client certificate + key.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl")

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        if parts.scheme not in ("mqtt", "tcp", "mqtts", "ssl"):
            raise BrokerError(f"unsupported MQTT URL scheme in {self.url!r} (use mqtt:// or mqtts://host:port)")
        return parts.hostname or "127.0.0.1", parts.port or (8883 if self.tls else 1883)

    def describe(self) -> str:
        host, port = self.host_port
        return f"{host}:{port} as {self.username} (client id {self.client_id})"


@dataclass(frozen=True, slots=True)
class InboundMessage:
    topic: str
    payload: bytes
    qos: int
    mid: int
    received_ns: int
    # Which connection delivered it (asyncio client): a PUBACK is only valid on that connection.
    # After a reconnect the broker re-sends what was not acknowledged, under the same ids.
    connection: int = 0


class MqttClientApi(Protocol):
    """What the bridge uses of an MQTT 5 client (manual acknowledgement of QoS 1 messages)."""

    @property
    def config(self) -> MqttConfig: ...

    def on_side_messages(self, topic_filter: str, handler: SideHandler) -> None:
        """QoS 0 status messages (``$SYS/#``) go to ``handler``, outside the bounded inbox."""
        ...

    def set_connection_listener(self, listener: ConnectionListener | None) -> None: ...

    async def start(self) -> None:
        """Connect; raise ``BrokerError`` if refused, ``BrokerUnavailableError`` if unreachable."""
        ...

    async def stop(self) -> None:
        """Disconnect; what was not acknowledged stays with the broker. Idempotent."""
        ...

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        """Return once the broker granted it (SUBACK); retained messages are never sent."""
        ...

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, *, retain: bool = False,
    ) -> asyncio.Future[None]:
        """The future resolves on PUBACK (QoS 1) or on send (QoS 0)."""
        ...

    async def receive_batch(self, max_messages: int, timeout_s: float) -> list[InboundMessage]: ...

    def ack(self, messages: Sequence[InboundMessage]) -> None:
        """The messages are safe: send their PUBACKs (in the order they were received)."""
        ...

    @property
    def unacked_inbound(self) -> int: ...

    @property
    def disconnects(self) -> int:
        """Connections lost or closed so far."""
        ...


def make_mqtt_client(
    kind: MqttClientKind, config: MqttConfig, *, manual_ack: bool = False,
    on_connection: ConnectionListener | None = None,
) -> MqttClientApi:
    """The named implementation (imported here: the asyncio client never loads paho)."""
    if kind == "asyncio":
        from brokers.mqtt_asyncio import AsyncioMqttClient

        return AsyncioMqttClient(config, manual_ack=manual_ack, on_connection=on_connection)
    if kind == "paho":
        from brokers.mqtt import MqttClient

        return MqttClient(config, manual_ack=manual_ack, on_connection=on_connection)
    raise BrokerError(f"unknown MQTT client {kind!r} (asyncio or paho)")
