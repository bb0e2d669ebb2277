"""The writer's Python row building alone: records -> binary COPY data of readings, device states.

    .venv/bin/python -m loadtests.write_rows_bench [--devices 1000] [--uplinks 20] [--batch 800]

No services. Same stream as ``loadtests.storage_bench`` (air uplinks, six
readings each, ``--batch`` uplinks from as many devices per transaction).
Prints milliseconds per transaction for ``WriteRows.of`` as the writer runs
it (cyclic GC paused) and with the collector left on, for the hourly rollup's
input arrays (``rollup_delta``), and for folding each
transaction's device states into the pending ones (``PendingStates.absorb``);
and per flush, for building the records of every device
(``PendingStates.input``). Best of 5 passes over the stream; figures, not
assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Sequence

from citysense.records import RecordBatch
from loadtests.storage_bench import BASE
from loadtests.storage_common import uplinks
from storage import rollup_delta, write_rows
from storage.latest_state import PendingStates
from storage.write_rows import WriteRows

_ALL_LATE = 2**62  # PG-epoch us: an open hour far in the future


def _gc_left_on(batches: Sequence[RecordBatch]) -> WriteRows:
    """What ``of`` does, without pausing the collector."""
    pause = write_rows._no_gc
    write_rows._no_gc = contextlib.nullcontext  # type: ignore[assignment]
    try:
        return WriteRows.of(batches)
    finally:
        write_rows._no_gc = pause


def _best_ms(fn: Callable[[], object], passes: int = 5) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--uplinks", type=int, default=20, help="uplinks per device")
    parser.add_argument("--batch", type=int, default=800, help="uplinks per transaction")
    args = parser.parse_args()
    stream = uplinks(args.devices, args.uplinks, BASE)
    chunks = [stream[i:i + args.batch] for i in range(0, len(stream), args.batch)]
    readings = sum(len(b.readings) for b in stream)
    per_txn = len(chunks)
    cases = {
        "WriteRows.of (GC paused, as the writer runs it)": lambda: [WriteRows.of(c) for c in chunks],
        "WriteRows.of with the cyclic GC left on": lambda: [_gc_left_on(c) for c in chunks],
        # every reading late (before the open hour): the most the merge's input can cost
        "rollup_delta.params, every reading late (rollup merge)":
            lambda: [rollup_delta.params(rollup_delta.late(c, _ALL_LATE)) for c in chunks],
    }
    print(f"{readings:,} readings in {per_txn} transactions of {args.batch} uplinks "
          f"({args.batch * 6:,} readings); ms per transaction, best of 5:")
    for name, fn in cases.items():
        print(f"  {name:<50} {_best_ms(fn) / per_txn:6.2f}")
    absorb_ms, pending = _absorb_best_ms(chunks)
    print(f"  {'PendingStates.absorb (fold into the pending states)':<50} {absorb_ms / per_txn:6.2f}")
    print(f"ms per flush of {len(pending):,} devices' states, best of 5:")
    print(f"  {'PendingStates.input (one record per device)':<50} {_best_ms(lambda: pending.input(0)):6.2f}")


def _absorb_best_ms(chunks: list[list[RecordBatch]], passes: int = 5) -> tuple[float, PendingStates]:
    """absorb takes the states over (and merges into them), so each pass gets fresh ones."""
    best, pending = float("inf"), PendingStates()
    for _ in range(passes):
        states = [WriteRows.of(c).devices for c in chunks]
        pending = PendingStates()
        t = time.perf_counter()
        for devices in states:
            pending.absorb(devices)
        best = min(best, time.perf_counter() - t)
    return best * 1000, pending


if __name__ == "__main__":
    main()
