"""The per-message normalisation, free of I/O: raw envelope -> record batch or dead letter.

Per raw message: envelope -> topic route (kind, device, profile, codec,
directory check; cached per MQTT topic) -> size check -> decode -> dedupe
-> validate (good records kept, rejected ones dead-lettered) -> clock
(skew corrected, late flagged) -> one ``RecordBatch`` keyed by device id.
``ingest.normaliser`` runs it over the raw topic.

The common uplink (every record valid, a plausible clock, nothing late or
beyond retention) returns right after validation; everything else goes
through ``_finish``, which applies the clock and retention and builds the
dead letter. Both give what the full path always gave.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from brokers.base import Message, TopicPartition
from citysense.device_ids import device_id_problem
from citysense.records import DeadLetter, RecordBatch, decode_envelope
from ingest.clock import NS, ClockPolicy, adjust, time_bounds
from ingest.codecs import CODECS, Codec, DecodeError
from ingest.codecs.base import MALFORMED, MAX_PAYLOAD_BYTES, OVERSIZE
from ingest.dedupe import Deduper, uplink_keys
from ingest.directory import DeviceDirectory
from ingest.dlq import (
    BAD_DEVICE_ID,
    BAD_ENVELOPE,
    BAD_TOPIC,
    KIND_MISMATCH,
    UNKNOWN_DEVICE,
    UNKNOWN_PROFILE,
    dead_letter,
)
from ingest.profiles import PROFILES, Profile
from ingest.settings import NormaliserSettings
from ingest.topics import parse_uplink_topic
from ingest.validate import Bounds, Rejection, profile_bounds, validate, within_retention

_ROUTE_CACHE_MAX = 200_000
# Longer topics hold no valid device id (citysense.device_ids): kept out of the cache, whose
# 200,000 entries of MQTT's 64 KiB topics would otherwise hold gigabytes.
_ROUTE_CACHE_MAX_TOPIC = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class NormaliseConfig:
    clock: ClockPolicy = field(default_factory=ClockPolicy)
    max_payload_bytes: int = MAX_PAYLOAD_BYTES
    dedupe_window: int = 20_000
    retention_ns: int = 90 * 86_400 * NS  # 0: keep every age (see NormaliserSettings)

    @classmethod
    def from_settings(cls, s: NormaliserSettings) -> NormaliseConfig:
        return cls(
            clock=ClockPolicy(
                future_tolerance_ns=int(s.normalise_clock_future_tolerance_s * NS),
                floor_ns=s.normalise_clock_floor_s * NS,
                late_after_ns=int(s.normalise_late_after_s * NS),
            ),
            max_payload_bytes=s.normalise_max_payload_bytes,
            dedupe_window=s.normalise_dedupe_window,
            retention_ns=int(s.normalise_retention.total_seconds()) * NS,
        )


class Route(msgspec.Struct, frozen=True):
    """Where an uplink topic's messages go (a struct: one is built per device, 10x cheaper than a
    frozen dataclass, which matters while a fleet of 100,000 devices first reports)."""

    kind: str
    device_id: str
    codec: Codec
    bounds: Bounds
    late_after_ns: int


@dataclass(slots=True)
class Outcome:
    batch: RecordBatch | None = None
    dead: DeadLetter | None = None
    duplicate: bool = False
    corrected: bool = False
    late: int = 0
    conflicts: int = 0  # conflicting duplicates inside the uplink (the codec kept the last)


class Normalise:
    """The per-message logic, free of I/O (unit-testable)."""

    def __init__(
        self, config: NormaliseConfig | None = None, directory: DeviceDirectory | None = None, *,
        profiles: Mapping[str, Profile] = PROFILES, codecs: Mapping[str, Codec] = CODECS,
    ) -> None:
        self.config = config or NormaliseConfig()
        self._directory = directory
        self._profiles = profiles
        self._codecs = codecs
        self._routes: dict[str, Route | tuple[str, str, str]] = {}
        self._per_kind: dict[str, tuple[Bounds, int]] = {}  # built once per kind, shared by its routes

    def route(self, mqtt_topic: str) -> Route | tuple[str, str, str]:
        """The route of an uplink topic, or ``(reason, message, device_id)`` refusing it."""
        cached = self._routes.get(mqtt_topic)
        if cached is None:
            if len(mqtt_topic) > _ROUTE_CACHE_MAX_TOPIC:  # no valid id is this long: refuse, uncached
                return self._make_route(mqtt_topic)
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            cached = self._routes[mqtt_topic] = self._make_route(mqtt_topic)
        return cached

    def _make_route(self, mqtt_topic: str) -> Route | tuple[str, str, str]:
        parsed = parse_uplink_topic(mqtt_topic)
        if parsed is None:
            return BAD_TOPIC, f"not an uplink topic: {mqtt_topic!r}", ""
        kind, device_id = parsed
        problem = device_id_problem(device_id)
        if problem is not None:  # e.g. a 3 kB id, which no database index would take
            return BAD_DEVICE_ID, problem, device_id[:64]
        profile = self._profiles.get(kind)
        if profile is None:
            return UNKNOWN_PROFILE, f"no profile for device kind {kind!r}", device_id
        codec = self._codecs.get(profile.codec)
        if codec is None:
            return UNKNOWN_PROFILE, f"profile {kind!r} names no known codec {profile.codec!r}", device_id
        if self._directory is not None:
            registered = self._directory.kind_of(device_id)
            if registered is None:
                return UNKNOWN_DEVICE, f"device {device_id!r} is not in the registry", device_id
            if registered != kind:
                return (KIND_MISMATCH, f"device {device_id!r} is registered as {registered!r} "
                        f"but published as {kind!r}", device_id)
        per_kind = self._per_kind.get(kind)
        if per_kind is None:
            late_after = self.config.clock.late_after_for(profile.report_interval_s)
            per_kind = self._per_kind[kind] = (profile_bounds(profile), late_after)
        return Route(kind, device_id, codec, *per_kind)

    def __call__(self, message: Message, dedupe: Deduper, tp: TopicPartition | None = None) -> Outcome:
        try:
            envelope = decode_envelope(message.value)
        except msgspec.DecodeError as exc:
            return Outcome(dead=dead_letter(message, BAD_ENVELOPE, f"raw record is not an envelope: {exc}"))
        route = self._routes.get(envelope.mqtt_topic) or self.route(envelope.mqtt_topic)
        if not isinstance(route, Route):
            return Outcome(dead=dead_letter(message, route[0], route[1], route[2]))
        device_id = route.device_id
        size = len(envelope.payload)
        if size > self.config.max_payload_bytes:
            return Outcome(dead=dead_letter(
                message, OVERSIZE, f"{size} bytes exceeds {self.config.max_payload_bytes}", device_id))
        conflicts = getattr(route.codec, "conflicts", 0)
        try:
            decoded = route.codec.decode(device_id, envelope.payload, envelope.received_ns)
        except UnicodeDecodeError as exc:  # bad input a codec let escape: still just bad input
            decoded = DecodeError(MALFORMED, f"payload is not valid UTF-8: {exc}")
        except RecursionError:  # JSON nested thousands deep
            decoded = DecodeError(MALFORMED, "payload is nested too deeply")
        if isinstance(decoded, DecodeError):
            return Outcome(dead=dead_letter(message, decoded.reason_code, decoded.message, device_id))
        if dedupe.is_duplicate(tp or message.tp, uplink_keys(decoded, envelope.payload)):
            return Outcome(duplicate=True)
        # one metric twice at one time in this uplink with different values (codecs keep the last)
        conflicts = getattr(route.codec, "conflicts", 0) - conflicts
        kept, rejected = validate(route.kind, route.bounds, decoded)
        if not rejected and self._plain(kept, envelope.received_ns, route.late_after_ns):
            return Outcome(kept, None, False, False, 0, conflicts)  # the common case: kept as decoded
        return self._finish(message, envelope.received_ns, route, kept, rejected, conflicts)

    def _plain(self, batch: RecordBatch, received_ns: int, late_after_ns: int) -> bool:
        """True when the batch has records and neither the clock nor retention would change it
        (one pass over its times instead of one per check)."""
        if not (batch.readings or batch.statuses or batch.health):
            return False
        oldest, newest = time_bounds(batch)
        config = self.config
        return (config.clock.leaves_alone(oldest, newest, batch.received_ns, late_after_ns)
                and (not config.retention_ns or oldest >= received_ns - config.retention_ns))

    def _finish(self, message: Message, received_ns: int, route: Route, kept: RecordBatch,
                rejected: list[Rejection], conflicts: int) -> Outcome:
        """Clock, retention and dead letters for an uplink the common case does not cover."""
        out = Outcome()
        if _records(kept):
            clocked = adjust(kept, self.config.clock, route.late_after_ns)
            kept, late = clocked.batch, clocked.late
            if self.config.retention_ns:
                kept, too_old, old_late = within_retention(kept, received_ns - self.config.retention_ns)
                rejected += too_old
                late -= old_late
            if _records(kept):
                out = Outcome(kept, None, False, clocked.corrected, late, conflicts)
        if rejected:
            reasons = sorted({r.reason for r in rejected})
            text = "; ".join(r.detail for r in rejected[:20])
            out.dead = dead_letter(message, reasons[0] if len(reasons) == 1 else "+".join(reasons),
                                   f"{len(rejected)} record(s) rejected, {_records(kept)} kept: {text}",
                                   route.device_id)
        return out


def _records(batch: RecordBatch) -> int:
    return len(batch.readings) + len(batch.statuses) + len(batch.health)
