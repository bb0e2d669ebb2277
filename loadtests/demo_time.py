"""Time from ``make demo`` to live data: run it, read ``up``'s status line, stop it with Ctrl-C.

    python3 loadtests/demo_time.py                    # in a fresh clone: venv and install included
    CITYSENSE_UP_BROKER=citysense python3 loadtests/demo_time.py

Prints seconds from the start of ``make demo`` to ``up``'s first line and to the first status
line with ``stored=`` above 0, then sends SIGINT and waits for the clean stop. Standard library
only (it runs before the venv exists); bounded at ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--live-s", type=float, default=20.0, help="keep running this long after live data")
    a = ap.parse_args()
    started = time.monotonic()
    proc = subprocess.Popen(["make", "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    assert proc.stdout is not None
    seen: dict[str, float] = {}
    text = ""
    while time.monotonic() - started < a.timeout:
        chunk = proc.stdout.read1(4096)
        if not chunk:
            break
        text += chunk.decode(errors="replace")
        now = round(time.monotonic() - started, 1)
        if "citysense up:" in text:
            seen.setdefault("up ready", now)
        if any(int(n) > 0 for n in re.findall(r"stored=(\d+)", text)):
            seen.setdefault("first stored reading", now)
            if now - seen["first stored reading"] >= a.live_s:
                break
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=120)
        text += rest.decode(errors="replace")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    print(f"seconds after `make demo`: {seen}")
    print("stopped cleanly" if "stopped cleanly" in text else "NOT stopped cleanly:\n" + text[-2000:])


if __name__ == "__main__":
    main()
