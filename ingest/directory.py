"""The device directory: which devices exist and of which kind.

The normaliser refuses uplinks from devices the platform does not know
(reason ``unknown_device``) and from devices publishing under another
kind's topic (``kind_mismatch``), instead of silently creating them. The
directory is loaded from the registry a scenario exports
(``citysense scenario export county``)::

    {"devices": [{"device_id": "air-0001", "kind": "air", ...}], "sites": [...]}

With no directory configured (embedded and development mode) every device
whose topic names a kind with a profile is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

import msgspec


class DeviceDirectory(Protocol):
    def kind_of(self, device_id: str) -> str | None:
        """The registered kind of a device, or None if it is unknown."""
        ...


class _Device(msgspec.Struct, frozen=True):
    device_id: str
    kind: str


class _Registry(msgspec.Struct, frozen=True):
    devices: list[_Device]


class StaticDirectory:
    """An in-memory directory (a dict lookup per uplink)."""

    def __init__(self, kinds: Mapping[str, str]) -> None:
        self._kinds = dict(kinds)

    @classmethod
    def of(cls, devices: Iterable[tuple[str, str]]) -> StaticDirectory:
        return cls(dict(devices))

    @classmethod
    def from_registry_json(cls, data: bytes | str) -> StaticDirectory:
        """Parse an exported registry; unrelated fields (sites, coordinates...) are ignored."""
        registry = msgspec.json.decode(data, type=_Registry)
        return cls({d.device_id: d.kind for d in registry.devices})

    @classmethod
    def load(cls, path: Path) -> StaticDirectory:
        return cls.from_registry_json(path.read_bytes())

    def kind_of(self, device_id: str) -> str | None:
        return self._kinds.get(device_id)

    def __len__(self) -> int:
        return len(self._kinds)
