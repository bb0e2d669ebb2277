"""Dead letters: reason codes, construction, and the ``citysense dlq`` tools (see ``core``)."""

from __future__ import annotations

from ingest.dlq.core import (
    BAD_DEVICE_ID,
    BAD_ENVELOPE,
    BAD_TOPIC,
    INTERNAL_ERROR,
    KIND_MISMATCH,
    MAX_ORIGINAL_BYTES,
    STAGE,
    UNKNOWN_DEVICE,
    UNKNOWN_PROFILE,
    ReplayResult,
    ScanResult,
    dead_letter,
    matching,
    original_envelope,
    replay,
    scan,
    stats,
)

__all__ = [
    "BAD_DEVICE_ID", "BAD_ENVELOPE", "BAD_TOPIC", "INTERNAL_ERROR", "KIND_MISMATCH",
    "MAX_ORIGINAL_BYTES", "STAGE",
    "UNKNOWN_DEVICE", "UNKNOWN_PROFILE", "ReplayResult", "ScanResult", "dead_letter", "matching",
    "original_envelope", "replay", "scan", "stats",
]
