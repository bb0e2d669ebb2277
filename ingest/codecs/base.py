"""The codec contract.

``encode`` turns what a device would send into payload bytes; ``decode``
turns payload bytes back into canonical records, or into a
:class:`DecodeError` with a machine-readable reason code. Decoding never
raises for bad input: bad input is data (it goes to the dead-letter topic),
not an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from citysense.records import RecordBatch


@dataclass(frozen=True, slots=True)
class DecodeError:
    reason_code: str
    message: str


# Reason codes shared by codecs and the normaliser (stable: operators filter on them).
MALFORMED = "malformed"
TRUNCATED = "truncated"
BAD_CRC = "bad_crc"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_METRIC = "unknown_metric"
OUT_OF_RANGE = "out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
OVERSIZE = "oversize"
UNSUPPORTED_MESSAGE = "unsupported_message"

# Payloads above this are refused by every codec (the broker allows 1 MiB).
MAX_PAYLOAD_BYTES = 64 * 1024
# Device uplink counters are u32 on every wire format (storage keeps them as int8).
MAX_SEQ = 2**32 - 1
# One uplink expands to at most this many records: a frame of repeated TLVs must not
# become a readings-topic message larger than Kafka accepts.
MAX_RECORDS_PER_UPLINK = 4096


def is_clean_text(value: object, max_len: int) -> bool:
    """A short string without control characters (PostgreSQL text refuses NUL)."""
    return isinstance(value, str) and len(value) <= max_len and value.isprintable()


class Codec(Protocol):
    name: str

    def encode(self, batch: RecordBatch) -> bytes: ...

    def decode(
        self, device_id: str, payload: bytes, received_ns: int
    ) -> RecordBatch | DecodeError: ...
