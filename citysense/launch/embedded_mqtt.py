"""Mosquitto for ``citysense up``: a child process with its own config in the data directory.

Same security as ``deploy/local/mosquitto.sh``: no anonymous login, a
password file (bridge, load generator and every registry device, hashed),
and an ACL where a device may write only ``devices/+/<its id>/up``. Unlike
the shared local broker it keeps persistence on, in the data directory, so
the bridge's persistent session (and what is queued for it) survives a
restart of ``up``. As root it drops to ``nobody`` (``user`` in the config).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.exceptions import ConfigurationError

RUN_AS = "nobody"
ACL = """\
user citysense-bridge
topic read devices/#
user citysense-loadgen
topic write devices/#
pattern write devices/+/%u/up
pattern read devices/+/%u/down
"""


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)


def _hash(password: str) -> str:
    from simulators.scenario_registry import mosquitto_hash

    return mosquitto_hash(password, secrets.token_bytes(12))


@dataclass
class EmbeddedMosquitto:
    root: Path
    port: int
    executable: str
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def configure(self, users: dict[str, str], device_hashes: Iterable[tuple[str, str]]) -> None:
        """Write config, password file (users' passwords hashed) and ACL."""
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "store").mkdir(exist_ok=True)
        lines = [f"{name}:{_hash(pw)}" for name, pw in users.items()]
        lines += [f"{device}:{hashed}" for device, hashed in device_hashes]
        (self.root / "passwd").write_text("\n".join(lines) + "\n")
        (self.root / "acl").write_text(ACL)
        user_line = f"user {RUN_AS}\n" if os.geteuid() == 0 else ""
        (self.root / "mosquitto.conf").write_text(
            f"{user_line}per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {self.root / 'passwd'}\n"
            f"acl_file {self.root / 'acl'}\n"
            "max_inflight_messages 1000\nmax_queued_messages 100000\nmax_packet_size 262144\n"
            f"persistence true\npersistence_location {self.root / 'store'}/\nautosave_interval 30\n"
            f"pid_file {self.root / 'mosquitto.pid'}\n"
            "log_dest stdout\nconnection_messages false\n"
        )
        for name in ("passwd", "acl"):
            (self.root / name).chmod(0o600)
        if os.geteuid() == 0:  # mosquitto reads them after dropping to RUN_AS
            entry = pwd.getpwnam(RUN_AS)
            for path in (self.root, self.root / "store", self.root / "passwd", self.root / "acl",
                         *(self.root / "store").iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def start(self, timeout_s: float = 10.0) -> None:
        log = open(self.root.parent / "mosquitto.log", "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [self.executable, "-c", str(self.root / "mosquitto.conf")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches up, which stops the broker last
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ConfigurationError(
                    f"mosquitto exited at start ({self._process.returncode}); see "
                    f"{self.root.parent / 'mosquitto.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ConfigurationError(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout_s:.0f}s")

    def stop_orphan(self) -> bool:
        """Stop a broker a killed ``up`` left running on this directory; True if there was one."""
        pid_file = self.root / "mosquitto.pid"
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        if str(self.root / "mosquitto.conf").encode() not in cmdline:
            return False  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        return True

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), then wait; idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
