"""A small MQTT 3.1.1/5 broker for ``citysense up`` when no Mosquitto binary is installed.

No broker from PyPI met the project's rules (see ``citysense/launch/README.md``:
amqtt 0.12.1 acknowledges a QoS 1 PUBLISH before routing it and loses what
is not yet routed when the publisher disconnects; mqttools grants QoS 0 only).
This one does only what ``up`` needs, and keeps the delivery rule: a QoS 1
PUBLISH is acknowledged after every matching session holds it.

Supported: MQTT 3.1.1 and 5 on TCP, password logins (Mosquitto's hashed
password file) and its ACL file (``user``/``topic``/``pattern`` with ``%u``,
``%c``), QoS 0 and 1, persistent sessions with re-sending of unacknowledged
messages, kept across a clean restart (``persistence.py``), shared
subscriptions (``$share/<group>/...``), wills, keep-alive, flow control
(Receive Maximum) and backpressure on publishers.

Not supported (refused or ignored, and stated): QoS 2, retained messages
(a retained PUBLISH is forwarded, never stored), TLS and WebSockets,
sessions across a crash (saved only on a clean stop), message expiry,
``$SYS`` topics, topic aliases, subscription identifiers, enhanced
authentication, and more than one process (one core).
"""

from brokers.mqtt_broker.access import Access
from brokers.mqtt_broker.server import BrokerConfig, MqttBroker

__all__ = ["Access", "BrokerConfig", "MqttBroker"]
