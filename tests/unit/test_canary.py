"""The bridge's canary bookkeeping: lost after the timeout, never while the bridge is stalled."""

from __future__ import annotations

from ingest.canary import CanaryWatch, canary_origin, canary_topic, echo_topic


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_topics_round_trip() -> None:
    assert canary_origin(canary_topic("citysense-bridge-h1")) == "citysense-bridge-h1"
    assert canary_origin("devices/air/air-0001/up") is None
    assert canary_origin("devices/_canary//up") is None
    assert echo_topic("b1") == "citysense/bridge/canary-seen/b1"


def test_returned_canaries_are_settled_and_late_ones_lost_once() -> None:
    clock = Clock()
    watch = CanaryWatch("g", timeout_s=10, clock=clock)
    first, second = watch.next_payload(), watch.next_payload()
    assert watch.same_group(first) and not CanaryWatch("other", 10).same_group(first)
    assert watch.returned(first) and not watch.returned(first)
    clock.now = 9.9
    assert watch.expire() == 0
    clock.now = 10.0
    assert watch.expire() == 1 and watch.expire() == 0
    assert not watch.returned(second)  # too late: already counted lost


def test_a_stall_pushes_the_deadlines_back() -> None:
    clock = Clock()
    watch = CanaryWatch("g", timeout_s=10, clock=clock)
    payload = watch.next_payload()
    clock.now = 5
    watch.pause()
    clock.now = 100
    assert watch.expire() == 0
    watch.resume()
    assert watch.expire() == 0  # 5 s of its 10 s used before the stall
    clock.now = 104.9
    assert watch.expire() == 0
    assert watch.returned(payload)
    assert CanaryWatch("g", 10).next_payload() != payload  # a restarted bridge has a new run id
