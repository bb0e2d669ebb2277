"""The bridge's canary: notices a client that consumes from the bridges' shared subscription.

Mosquitto hands each message of ``$share/<group>/devices/+/+/up`` to ONE member of
the group. A member that is not a bridge (a device that was allowed to join, a
misconfigured tool, a bridge of an old version) takes its share and the uplinks
are gone; nothing in MQTT tells the bridges. So every bridge publishes a canary,
every few seconds, to its own uplink topic ``devices/_canary/<client id>/up``;
whichever bridge of the group receives it (maybe itself) echoes the payload
(which names the group: bridges of other groups ignore it) to
``citysense/bridge/canary-seen/<client id>``, which the sender subscribes to.
A canary not echoed within the timeout was taken by something that is not a
bridge (or lost): logged and counted (``citysense_bridge_canaries_total
{outcome="lost"}``). Cost: two small QoS 1 messages per bridge per interval.

While the bridge itself is stalled (Kafka down, it stops reading MQTT) the clock
is paused, so an outage is not reported as a competitor. A peer bridge that is
stalled while this one is not can make a canary late: "lost" means "taken by
another consumer, or stuck in a stalled bridge for longer than the timeout".
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

CANARY_KIND = "_canary"  # never a device kind: devices may not publish under it (broker ACL)
ECHO_ROOT = "citysense/bridge/canary-seen"
_CANARY_PREFIX = f"devices/{CANARY_KIND}/"


def canary_topic(client_id: str) -> str:
    return f"devices/{CANARY_KIND}/{client_id}/up"


def echo_topic(client_id: str) -> str:
    return f"{ECHO_ROOT}/{client_id}"


def canary_origin(topic: str) -> str | None:
    """The sending bridge's client id if ``topic`` is a canary topic."""
    if not topic.startswith(_CANARY_PREFIX):  # the bridge asks this of every uplink: keep it cheap
        return None
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "devices" or parts[1] != CANARY_KIND or parts[3] != "up":
        return None
    return parts[2] or None


class CanaryWatch:
    """Canaries sent and not yet returned, with their deadlines (pure logic, no I/O)."""

    def __init__(self, group: str, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.group = group
        self.timeout_s = timeout_s
        self._clock = clock
        self._run = os.urandom(4).hex()  # a restarted bridge ignores its predecessor's echoes
        self._seq = 0
        self._outstanding: dict[bytes, float] = {}
        self._paused_at: float | None = None

    def next_payload(self) -> bytes:
        self._seq += 1
        payload = f"{self.group}:{self._run}:{self._seq}".encode()
        self._outstanding[payload] = self._clock() + self.timeout_s
        return payload

    def same_group(self, payload: bytes) -> bool:
        """A canary of our group: ours to echo (every group subscribed to the uplinks sees it)."""
        return payload.startswith(f"{self.group}:".encode())

    def returned(self, payload: bytes) -> bool:
        """True if ``payload`` is one of ours still outstanding (now settled)."""
        return self._outstanding.pop(payload, None) is not None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock()

    def resume(self) -> None:
        """Push every deadline back by the time spent paused."""
        if self._paused_at is None:
            return
        stalled = self._clock() - self._paused_at
        self._paused_at = None
        self._outstanding = {p: d + stalled for p, d in self._outstanding.items()}

    def expire(self) -> int:
        """Forget and count the canaries past their deadline (none while paused)."""
        if self._paused_at is not None:
            return 0
        now = self._clock()
        late = [p for p, deadline in self._outstanding.items() if deadline <= now]
        for p in late:
            del self._outstanding[p]
        return len(late)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)
