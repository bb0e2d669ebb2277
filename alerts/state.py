"""The engine's per-device evaluation state, checkpointed to PostgreSQL as msgpack.

One :class:`DeviceState` per device holds every rule's :class:`RuleState`
(phase, grade, pending-since, the open alert's id, window points, flap
history) plus the device's last uplink and its charger connectors. These
are mutable on purpose: the engine updates them in place per reading and
encodes the devices changed since the last checkpoint.
"""

from __future__ import annotations

import msgspec

INACTIVE, PENDING, FIRING = 0, 1, 2
PHASE_NAMES = {INACTIVE: "resolved", PENDING: "pending", FIRING: "firing"}


class RuleState(msgspec.Struct, array_like=True, gc=False):
    phase: int = INACTIVE
    grade: int = 0  # 1 red .. 4 blue; 0 when inactive
    since_ns: int = 0  # pending since (device time)
    alert_id: int = 0  # the open alert's row, 0 until the checkpoint wrote it
    value: float = 0.0
    last_ns: int = 0  # device time of the newest reading evaluated (older ones are late)
    points: list[tuple[int, float]] = msgspec.field(default_factory=list)  # window (time, value)
    flaps: list[int] = msgspec.field(default_factory=list)  # fire/resolve times in the flap window
    flapping: bool = False
    notified_ns: int = 0  # clock time of the open alert's last notification (repeat_interval)


class DeviceState(msgspec.Struct, array_like=True, gc=False):
    partition: int = -1
    last_seen_ns: int = 0  # last uplink (received time); 0: never reported
    watch_since_ns: int = 0  # a never-reported device is watched from here
    rules: dict[str, RuleState] = msgspec.field(default_factory=dict)
    # connector -> (state, since_ns) for state-duration rules
    connectors: dict[int, tuple[str, int]] = msgspec.field(default_factory=dict)
    # the last offline period [from, to) in device time: transitions at moments inside it came
    # from readings buffered while the device was offline, and are inhibited
    offline: tuple[int, int] = (0, 0)

    def rule(self, rule_id: str) -> RuleState:
        rs = self.rules.get(rule_id)
        if rs is None:
            rs = self.rules[rule_id] = RuleState()
        return rs


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DeviceState)


def encode_state(state: DeviceState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> DeviceState:
    return _decoder.decode(data)
