from __future__ import annotations

from citysense.exceptions import CitysenseError, IncorrectStateError


class BrokerError(CitysenseError):
    """A transport failed."""


class BrokerUnavailableError(BrokerError):
    """The broker cannot be reached now; the same call may work later."""

    retriable = True


class MqttProtocolError(BrokerError):
    """An MQTT packet is malformed or breaks the protocol; the connection is closed."""


class CommitFailedError(BrokerError):
    """Offsets could not be committed (the group rebalanced under us).

    The records will be delivered again to whoever owns the partition now;
    idempotent sinks make that harmless.
    """

    retriable = True


class NotStartedError(IncorrectStateError, BrokerError):
    """A producer or consumer was used before ``start()`` or after ``stop()``."""


__all__ = [
    "BrokerError",
    "BrokerUnavailableError",
    "CommitFailedError",
    "MqttProtocolError",
    "NotStartedError",
]
