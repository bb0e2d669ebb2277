"""Uplinks/s the device models generate (no MQTT), per kind and for the scale mix.

    .venv/bin/python loadtests/sim_generation_bench.py [--devices 100000] [--uplinks 300000]
    .venv/bin/python loadtests/sim_generation_bench.py --profile     # cProfile top costs

Builds the ``scale`` scenario's devices, skips one warm-up round, then times
``--uplinks`` uplinks of ``round_robin`` (the load shape) in CPU time of this
process (``time.process_time``), so a busy shared machine shows up less than
in wall-clock figures. ``--per-kind`` also times 2,000 devices of each kind.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import time

from simulators.load import build_streams, round_robin
from simulators.scenario import ScaleScenario, load_scenario
from simulators.scenario_registry import DeviceSpec, scale_devices

T0 = 1_735_689_600 * 10**9  # 2025-01-01T00:00Z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--uplinks", type=int, default=300_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="cProfile the timed part (slower)")
    ap.add_argument("--per-kind", action="store_true")
    a = ap.parse_args()
    sc = load_scenario("scale")
    assert isinstance(sc, ScaleScenario)
    if a.per_kind:
        weight = sum(sc.mix.values())
        mixed = 0.0
        for kind, share in sc.mix.items():
            streams = build_streams([DeviceSpec(f"{kind}-{i:06d}", kind) for i in range(2000)],
                                    seed=a.seed, start_ns=T0)
            t0 = time.process_time()
            for _ in range(5):
                for s in streams:
                    s.take()
            us = (time.process_time() - t0) / 10_000 * 1e6
            mixed += share / weight * us
            print(f"{kind:8s} {us:6.1f} us/uplink")
        print(f"mix      {mixed:6.1f} us/uplink (2,000 devices per kind: caches warm)")
    t0 = time.perf_counter()
    streams = build_streams(scale_devices(sc, a.devices), seed=a.seed, start_ns=T0)
    uplinks = round_robin(streams)
    for _ in itertools.islice(uplinks, a.devices):  # the first round sets every device up
        pass
    print(f"{a.devices} devices built and warmed up in {time.perf_counter() - t0:.1f} s")
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in itertools.islice(uplinks, a.uplinks):
            pass
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    t0 = time.process_time()
    for _ in itertools.islice(uplinks, a.uplinks):
        pass
    cpu = time.process_time() - t0
    print(f"{a.uplinks} uplinks in {cpu:.2f} s CPU: {a.uplinks / cpu:,.0f} uplinks/s, "
          f"{cpu / a.uplinks * 1e6:.1f} us per uplink")


if __name__ == "__main__":
    main()
