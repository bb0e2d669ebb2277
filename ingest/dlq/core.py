"""Dead letters: reason codes, how the normaliser builds them, and the operator tools.

A dead letter keeps the *raw record as consumed* (the envelope bytes, which
hold the MQTT topic, device id, received time and the payload verbatim), so
``replay`` can re-publish exactly what arrived once the cause is fixed.
Only a record too large to fit the DLQ is cut (``original_truncated``).

``scan`` reads the DLQ from the beginning in a throwaway consumer group
that never commits; it stops at the first idle ``idle_ms`` or ``limit``
records, so a tool run is bounded. ``replay`` skips dead letters written
after it started, so it never replays its own re-failures.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from brokers.base import Bus, KeyValue, Message
from citysense.records import DeadLetter, Envelope, decode_dead_letter, decode_envelope, encode

STAGE = "normalise"

# Reason codes of the normaliser (codec reasons are in ingest.codecs.base).
BAD_ENVELOPE = "bad_envelope"
BAD_TOPIC = "bad_topic"
UNKNOWN_PROFILE = "unknown_profile"
UNKNOWN_DEVICE = "unknown_device"
KIND_MISMATCH = "kind_mismatch"
INTERNAL_ERROR = "internal_error"
BAD_DEVICE_ID = "bad_device_id"  # too long, or characters outside citysense.device_ids

# Kafka refuses messages above ~1 MiB; a dead letter must always fit.
MAX_ORIGINAL_BYTES = 256 * 1024


def dead_letter(message: Message, reason: str, text: str, device_id: str = "") -> DeadLetter:
    original = message.value
    if len(original) > MAX_ORIGINAL_BYTES:
        text = f"{text} (original_truncated from {len(original)} bytes)"
        original = original[:MAX_ORIGINAL_BYTES]
    return DeadLetter(reason, text, STAGE, message.topic, message.partition, message.offset,
                      original, device_id, time.time_ns())


def original_envelope(letter: DeadLetter) -> Envelope | None:
    """The envelope a dead letter was made from, or None (not an envelope, or truncated)."""
    try:
        return decode_envelope(letter.original)
    except msgspec.DecodeError:
        return None


@dataclass(frozen=True, slots=True)
class ScanResult:
    letters: list[DeadLetter]
    unreadable: int


async def scan(bus: Bus, dlq_topic: str, *, limit: int = 1_000_000, idle_ms: int = 3000) -> ScanResult:
    consumer = bus.consumer([dlq_topic], f"citysense-dlq-tool-{uuid.uuid4().hex[:12]}")
    letters: list[DeadLetter] = []
    unreadable = 0
    await consumer.start()
    try:
        while len(letters) < limit:
            batches = await consumer.getmany(idle_ms, min(2000, limit - len(letters)))
            if not batches:
                break
            for msgs in batches.values():
                for m in msgs:
                    try:
                        letters.append(decode_dead_letter(m.value))
                    except msgspec.DecodeError:
                        unreadable += 1
    finally:
        await consumer.stop()
    return ScanResult(letters[:limit], unreadable)


def stats(letters: Iterable[DeadLetter]) -> Counter[tuple[str, str]]:
    """Counts by (stage, reason code)."""
    return Counter((d.stage, d.reason_code) for d in letters)


def matching(reasons: set[str] | None, stage: str | None = STAGE) -> Callable[[DeadLetter], bool]:
    def keep(d: DeadLetter) -> bool:
        return (not reasons or d.reason_code in reasons) and (stage is None or d.stage == stage)

    return keep


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: int
    skipped: int


async def replay(
    bus: Bus, *, dlq_topic: str, raw_topic: str, reasons: set[str] | None = None,
    idle_ms: int = 3000, batch_size: int = 1000,
) -> ReplayResult:
    """Re-publish the original envelopes of matching normaliser dead letters to the raw topic.

    The envelope keeps its received time (when the platform first had the
    uplink). Replaying twice is harmless downstream: the dedupe window and
    the database key absorb the repeats.
    """
    started_ns = time.time_ns()
    found = await scan(bus, dlq_topic, idle_ms=idle_ms)
    keep = matching(reasons)
    records: list[KeyValue] = []
    skipped = 0
    for letter in found.letters:
        if letter.failed_ns > started_ns or not keep(letter):
            continue
        envelope = original_envelope(letter)
        if envelope is None:
            skipped += 1
            continue
        records.append((envelope.device_id.encode(), encode(envelope)))
    producer = bus.producer()
    await producer.start()
    try:
        for i in range(0, len(records), batch_size):
            await producer.send_batch(raw_topic, records[i : i + batch_size])
    finally:
        await producer.stop()
    return ReplayResult(len(records), skipped)
