"""What the engine knows about devices: registry attributes, rule selection, silences.

A device in the registry is selected by its kind, profile, site, district,
township, id and tags. A device not in the registry is known only by its id;
its kind is taken from the id's prefix (``air-0001`` -> ``air``) when that
names a profile, so kind-selected rules still apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka.partitioner import murmur2

from alerts.rules import Selector
from ingest.profiles import PROFILES
from storage.alerts_engine_sql import DeviceRow


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    device_id: str
    kind: str
    profile: str
    site_id: str | None = None
    district: str = ""
    township: str = ""
    interval_s: float = 0.0  # expected report interval (registry, else profile)
    tags: tuple[str, ...] = ()
    registered: bool = False


def guess(device_id: str) -> DeviceInfo:
    kind = device_id.split("-", 1)[0]
    profile = PROFILES.get(kind)
    return DeviceInfo(device_id, kind if profile else "", kind if profile else "",
                      interval_s=profile.report_interval_s if profile else 0.0)


def registered(row: DeviceRow) -> DeviceInfo:
    return DeviceInfo(row.device_id, row.kind, row.profile, row.site_id, row.district, row.township,
                      row.report_interval_s, tuple(row.tags), True)


def partition_of(device_id: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2 of the key), as the producers use it."""
    return (int(murmur2(device_id.encode())) & 0x7FFFFFFF) % partitions


def selects(sel: Selector, d: DeviceInfo) -> bool:
    return ((not sel.kind or d.kind in sel.kind)
            and (not sel.profile or d.profile in sel.profile)
            and (not sel.site or (d.site_id is not None and d.site_id in sel.site))
            and (not sel.district or d.district in sel.district)
            and (not sel.township or d.township in sel.township)
            and (not sel.device_ids or d.device_id in sel.device_ids)
            and (not sel.tags or any(t in d.tags for t in sel.tags)))


@dataclass(frozen=True, slots=True)
class ActiveSilence:
    """An operator's silence: selector fields (plus ``rule_ids``) and its time window."""

    selector: Selector
    rule_ids: tuple[str, ...]
    starts_at: datetime
    ends_at: datetime

    @classmethod
    def of(cls, selector: dict[str, Any], starts_at: datetime, ends_at: datetime) -> ActiveSilence:
        fields = {k: v for k, v in selector.items() if k in Selector.model_fields}
        return cls(Selector.model_validate(fields), tuple(selector.get("rule_ids") or ()), starts_at, ends_at)

    def covers(self, rule_id: str, d: DeviceInfo, now: datetime) -> bool:
        return (self.starts_at <= now < self.ends_at and (not self.rule_ids or rule_id in self.rule_ids)
                and selects(self.selector, d))
