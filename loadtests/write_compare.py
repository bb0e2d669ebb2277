"""Writer against raw binary COPY, as both storage benchmarks measure it.

Rounds of A-B-B-A (raw, writer, writer, raw) over fresh streams, so table
growth and the machine's drift favour neither; the ratio is total rows over
total seconds of each. Besides wall time, each side's CPU is counted: this
process (``time.process_time``, the encoding) and every ``postgres`` process
on the machine (from ``/proc``; the benchmarks run next to their own server),
so the CPU per row says what each side's speed costs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    """CPU seconds used so far by every process named postgres (0 where /proc cannot say).

    Backends and autovacuum workers come and go: the ones that have exited are
    counted through their parent's children times (cutime, cstime), so the total
    only grows."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, _, rest = stat.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / _TICK


@dataclass
class Tally:
    rows: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def cpu_per_100k(self) -> str:
        scale = 100_000 / self.rows
        return (f"CPU per 100k rows: client {self.client_cpu * scale:.2f}s, "
                f"postgres {self.server_cpu * scale:.2f}s")


async def timed(tally: Tally, run: Awaitable[int]) -> None:
    """Add one run (a coroutine not yet started, returning its row count) to ``tally``."""
    server, client, wall = postgres_cpu_s(), time.process_time(), time.perf_counter()
    rows = await run
    tally.seconds += time.perf_counter() - wall
    tally.client_cpu += time.process_time() - client
    tally.server_cpu += postgres_cpu_s() - server
    tally.rows += rows


def report(raw: Tally, writer: Tally, label: str = "writer (no duplicates)") -> None:
    print(f"  raw binary COPY          {raw.rate:>9,.0f} rows/s  ({raw.rows:,} rows; {raw.cpu_per_100k()})")
    print(f"  {label:<24} {writer.rate:>9,.0f} rows/s  ratio {writer.rate / raw.rate:.2f}"
          f"  ({writer.rows:,} rows; {writer.cpu_per_100k()})")
