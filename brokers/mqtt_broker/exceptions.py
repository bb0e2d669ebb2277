from __future__ import annotations

from brokers.exceptions import BrokerError, MqttProtocolError


class ProtocolError(MqttProtocolError):
    """A client broke the MQTT protocol; its connection is closed with ``reason`` (MQTT 5 code).

    The wire layer's own ``MqttProtocolError`` (a malformed field) closes it with 0x81."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


class AccessFileError(BrokerError):
    """A password or ACL file the broker was given cannot be used; never retriable."""


__all__ = ["AccessFileError", "ProtocolError"]
