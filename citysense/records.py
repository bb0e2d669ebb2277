"""Records that travel between stages, and their wire encoding.

Every inter-stage record is a frozen msgspec struct encoded as msgpack with
a tag, so a consumer can tell record kinds apart and a future ``v2`` schema
can live beside ``v1`` on the same topic. Times are integer nanoseconds
since the Unix epoch (UTC): exact, cheap to compare, and free of time-zone
ambiguity on the hot path.
"""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1

# Quality flags on a reading (bit set).
QUALITY_CLOCK_CORRECTED = 1
QUALITY_LATE = 2


class Envelope(msgspec.Struct, frozen=True, tag="env1", array_like=True, gc=False):
    """A raw uplink as the bridge received it (raw topic)."""

    mqtt_topic: str
    device_id: str
    received_ns: int
    payload: bytes


class Reading(msgspec.Struct, frozen=True, tag="rd1", array_like=True, gc=False):
    """One canonical measurement."""

    device_id: str
    metric: str
    time_ns: int
    value: float
    received_ns: int
    seq: int = -1
    quality: int = 0


class Status(msgspec.Struct, frozen=True, tag="st1", array_like=True, gc=False):
    """A charger connector status change."""

    device_id: str
    connector: int
    time_ns: int
    state: str
    error_code: str = "NoError"
    session_id: str = ""
    # OCPP's free-form ``info``; session start/stop reasons travel as ``start:<how>`` and
    # ``stop:<OCPP Reason>`` (storage keeps them on the session).
    info: str = ""


class Health(msgspec.Struct, frozen=True, tag="hl1", array_like=True, gc=False):
    """Radio and power health of a device at one time."""

    device_id: str
    time_ns: int
    rsrp_dbm: float | None = None
    sinr_db: float | None = None
    ce_level: int | None = None
    battery_v: float | None = None


class RecordBatch(msgspec.Struct, frozen=True, tag="rb1", array_like=True, gc=False):
    """Everything one uplink became (readings topic).

    One Kafka message per uplink rather than per reading keeps the message
    rate equal to the uplink rate: an NB-IoT wake-up carrying twelve buffered
    readings costs one produce, not twelve.
    """

    device_id: str
    received_ns: int
    readings: tuple[Reading, ...] = ()
    statuses: tuple[Status, ...] = ()
    health: tuple[Health, ...] = ()


class DeadLetter(msgspec.Struct, frozen=True, tag="dl1", array_like=True, gc=False):
    """A message a stage could not handle, with why (DLQ topic)."""

    reason_code: str
    message: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    original: bytes
    device_id: str = ""
    failed_ns: int = 0


_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_batch_decoder = msgspec.msgpack.Decoder(RecordBatch)
_dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)


def encode(record: Envelope | RecordBatch | DeadLetter) -> bytes:
    return _encoder.encode(record)


def decode_envelope(data: bytes) -> Envelope:
    return _envelope_decoder.decode(data)


def decode_batch(data: bytes) -> RecordBatch:
    return _batch_decoder.decode(data)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(data)
