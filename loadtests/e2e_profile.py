"""py-spy under load: sample each stage process during a benchmark step.

``py-spy record --format raw`` writes collapsed stacks (one line per distinct
stack, with its sample count); from them come a flame graph (``flamegraph.pl``
or speedscope can read the file) and, here, the functions with the most
samples of their own (where the CPU goes) and the most inclusive samples.
Idle threads are left out, so a sample is a moment the process was running.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


async def record(pids: dict[str, int], seconds: float, out_dir: Path, tag: str) -> dict[str, Path]:
    """Sample every process for ``seconds`` (in parallel); returns the raw files."""
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    files = {name: out_dir / f"{name}-{tag}.txt" for name in pids}
    procs = [await asyncio.create_subprocess_exec(
        PY_SPY, "record", "--nonblocking", "--format", "raw", "--rate", "50", "--duration", str(int(seconds)),
        "--pid", str(pid), "--output", str(files[name]),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL) for name, pid in pids.items()]
    for p in procs:
        await p.wait()
    return {k: v for k, v in files.items() if v.exists()}


def _frame(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    module = where.split(":")[0].rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name


def summarise(path: Path, top: int = 12) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return {"samples": 0, "self_pct": [], "inclusive_pct": []}
    # Frames on (nearly) every stack - the event loop, the CLI - say nothing: leave them out.
    busy = Counter({k: v for k, v in inclusive.items() if v < 0.9 * total})
    return {"samples": total,
            "self_pct": [(k, round(v / total * 100, 1)) for k, v in own.most_common(top)],
            "inclusive_pct": [(k, round(v / total * 100, 1)) for k, v in busy.most_common(top)]}
