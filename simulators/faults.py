"""Fault injection on an uplink stream, at per-uplink ratios, deterministic for a seed.

Each clean uplink draws once; with the configured probabilities (exclusive)
it becomes:

- ``duplicate``: sent twice (the second copy is tagged);
- ``out_of_order``: held back and sent after the next uplink;
- ``clock_skew``: re-encoded with the device clock off by 1 min..2 h (either way);
- ``malformed``: one byte in the middle inverted (JSON: ``malformed``;
  raw NB-IoT frame: ``bad_crc``; hex frame: ``unsupported_version``);
- ``truncated``: cut short at a random point;
- ``unknown_device``: sent under a device id no registry has (``ghost-...``);
- ``oversize``: padded past ``MAX_PAYLOAD_BYTES`` (the codecs answer ``oversize``);
- ``reconnect_burst``: the device goes offline for 2..6 of its uplinks, then
  reconnects (``reconnect=True`` on the first) and sends the backlog
  back-to-back with its original device times: late delivery after an outage.

``counts`` tallies faults per draw, so a test can compare them with the ratios.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping

import msgspec

from citysense.records import RecordBatch
from ingest.codecs import codec_named
from ingest.codecs.base import MAX_PAYLOAD_BYTES
from ingest.profiles import PROFILES
from ingest.topics import parse_uplink_topic, uplink_topic
from simulators.model import NS, Uplink

FAULTS = ("duplicate", "out_of_order", "clock_skew", "malformed", "truncated",
          "unknown_device", "oversize", "reconnect_burst")


def shift_batch(batch: RecordBatch, delta_ns: int) -> RecordBatch:
    return RecordBatch(
        batch.device_id, batch.received_ns,
        tuple(msgspec.structs.replace(r, time_ns=r.time_ns + delta_ns) for r in batch.readings),
        tuple(msgspec.structs.replace(s, time_ns=s.time_ns + delta_ns) for s in batch.statuses),
        tuple(msgspec.structs.replace(h, time_ns=h.time_ns + delta_ns) for h in batch.health),
    )


class FaultInjector:
    def __init__(self, ratios: Mapping[str, float], seed: int) -> None:
        unknown = set(ratios) - set(FAULTS)
        if unknown or sum(ratios.values()) > 1:
            raise ValueError(f"bad fault ratios {dict(ratios)}")
        self._rng = random.Random(f"faults:{seed}")
        self._thresholds: list[tuple[float, str]] = []
        acc = 0.0
        for name in FAULTS:
            if ratios.get(name, 0.0) > 0:
                acc += ratios[name]
                self._thresholds.append((acc, name))
        self._any = acc
        self.draws = 0
        self.counts: Counter[str] = Counter()
        self._held: Uplink | None = None
        self._offline: dict[str, tuple[int, list[Uplink]]] = {}

    def apply(self, uplink: Uplink) -> list[Uplink]:
        """What to send (in order) in place of ``uplink``; may be empty (held back)."""
        offline = self._offline.get(uplink.device_id)
        if offline is not None:
            left, backlog = offline
            backlog.append(uplink.replace(fault="reconnect_burst"))
            if left > 1:
                self._offline[uplink.device_id] = (left - 1, backlog)
                return []
            del self._offline[uplink.device_id]
            backlog[0] = backlog[0].replace(reconnect=True)
            return self._release(backlog)
        self.draws += 1
        roll = self._rng.random()
        fault = ""
        if roll < self._any:
            for threshold, name in self._thresholds:
                if roll < threshold:
                    fault = name
                    break
        if not fault:
            return self._release([uplink])
        self.counts[fault] += 1
        return self._release(self._fault(fault, uplink))

    def _release(self, out: list[Uplink]) -> list[Uplink]:
        if self._held is not None and out:
            out.append(self._held)
            self._held = None
        return out

    def _fault(self, fault: str, u: Uplink) -> list[Uplink]:
        rng = self._rng
        if fault == "duplicate":
            return [u, u.replace(fault=fault)]
        if fault == "out_of_order":
            if self._held is not None:  # never hold two: send the older one now
                return self._release([u.replace(fault=fault)])
            self._held = u.replace(fault=fault)
            return []
        if fault == "reconnect_burst":
            self._offline[u.device_id] = (rng.randint(1, 5), [u.replace(fault=fault)])
            return []
        payload, topic, device_id = u.payload, u.topic, u.device_id
        if fault == "clock_skew":
            delta = rng.choice((-1, 1)) * rng.randint(60, 7200) * NS
            if not (u.batch.readings or u.batch.statuses):
                return [u.replace(fault=fault)]  # an OCPP Heartbeat.req carries no clock to skew
            parsed = parse_uplink_topic(u.topic)
            kind = parsed[0] if parsed else ""
            shifted = shift_batch(u.batch, delta)
            payload = codec_named(PROFILES[kind].codec).encode(shifted)
            return [u.replace(payload=payload, batch=shifted, fault=fault)]
        if fault == "malformed":
            i = len(payload) // 2
            payload = payload[:i] + bytes((payload[i] ^ 0xFF,)) + payload[i + 1:]
        elif fault == "truncated":
            payload = payload[: rng.randint(1, max(1, len(payload) - 1))]
        elif fault == "unknown_device":
            device_id = f"ghost-{rng.randrange(10**6):06d}"
            parsed = parse_uplink_topic(u.topic)
            topic = uplink_topic(parsed[0] if parsed else "unknown", device_id)
        elif fault == "oversize":
            payload = payload + b" " * (MAX_PAYLOAD_BYTES + 1 - len(payload) + rng.randint(0, 1024))
        return [u.replace(device_id=device_id, topic=topic, payload=payload, fault=fault)]

    def flush(self) -> list[Uplink]:
        """Whatever is still held back or offline (at the end of a run)."""
        out = [u.replace(reconnect=i == 0)
               for _, backlog in self._offline.values() for i, u in enumerate(backlog)]
        self._offline.clear()
        if self._held is not None:
            out.append(self._held)
            self._held = None
        return out


def inject(uplinks: Iterable[Uplink], injector: FaultInjector) -> Iterator[Uplink]:
    """``uplinks`` with faults: ``injector.apply`` on each, then ``flush``.

    The clean case (no device offline, nothing held back, no fault drawn) is
    inlined: it is 97 % of a load run's uplinks. The draws are exactly those
    ``apply`` makes, so the output is the same as calling it on each uplink.
    """
    apply, rand, offline, limit = injector.apply, injector._rng.random, injector._offline, injector._any
    for u in uplinks:
        if (offline and u.device_id in offline) or injector._held is not None:
            yield from apply(u)
            continue
        injector.draws += 1
        roll = rand()
        if roll >= limit:
            yield u
            continue
        fault = next(name for threshold, name in injector._thresholds if roll < threshold)
        injector.counts[fault] += 1
        yield from injector._release(injector._fault(fault, u))
    yield from injector.flush()
