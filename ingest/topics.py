"""The MQTT topic scheme: ``devices/{kind}/{device_id}/up``."""

from __future__ import annotations

UPLINK_FILTER = "devices/+/+/up"


def uplink_topic(kind: str, device_id: str) -> str:
    return f"devices/{kind}/{device_id}/up"


def parse_uplink_topic(topic: str) -> tuple[str, str] | None:
    """``(kind, device_id)`` of an uplink topic, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[3] != "up" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]
