"""Topic filters: validity, shared-subscription names and ACL coverage (matching: ``mqtt_wire``)."""

from __future__ import annotations


def valid_filter(topic_filter: str) -> bool:
    if not topic_filter or len(topic_filter.encode()) > 65535:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``$share/<group>/<filter>`` -> ``(group, filter)``; anything else -> ``(None, filter)``."""
    if not topic_filter.startswith("$share/"):
        return None, topic_filter
    parts = topic_filter.split("/", 2)
    if len(parts) < 3 or not parts[1] or "+" in parts[1] or "#" in parts[1] or not parts[2]:
        raise ValueError(f"malformed shared subscription {topic_filter!r}")
    return parts[1], parts[2]


def covers(rule: str, topic_filter: str) -> bool:
    """Does an ACL rule allow reading every topic ``topic_filter`` can match?

    Wildcards in the filter are taken as they stand: ``+`` in the filter is
    covered only by ``+`` or ``#`` in the rule, ``#`` only by ``#``.
    """
    r_levels, f_levels = rule.split("/"), topic_filter.split("/")
    for i, level in enumerate(r_levels):
        if level == "#":
            return True
        if i >= len(f_levels):
            return False
        got = f_levels[i]
        if got == "#" or (level != "+" and level != got) or (level != "+" and got == "+"):
            return False
    return len(r_levels) == len(f_levels)
