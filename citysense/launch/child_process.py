"""Stopping the servers ``up`` runs as child processes (Mosquitto, the project's MQTT broker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from citysense.exceptions import ConfigurationError


def start_child(command: list[str], log_path: Path, port: int, name: str,
                timeout_s: float = 10.0) -> subprocess.Popen[bytes]:
    """Start a server in its own session (Ctrl-C reaches ``up``, which stops it last) and wait
    until it listens on 127.0.0.1:``port``; its output goes to ``log_path``."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigurationError(f"{name} exited at start ({process.returncode}); see {log_path}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            time.sleep(0.1)
    stop_child(process)
    raise ConfigurationError(f"{name} did not listen on 127.0.0.1:{port} in {timeout_s:.0f}s")


def stop_child(process: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
    """SIGTERM (a broker saves its sessions on it), wait, then SIGKILL; nothing if already gone."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_orphan(pid_file: Path, marker: Path) -> bool:
    """SIGTERM the server a killed ``up`` left behind (its pid file), and wait up to 10 s.

    Only if that pid's command line names ``marker`` (its config or password file): a pid reused
    by another program is left alone. True if there was one."""
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    if str(marker).encode() not in cmdline:
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    return True
