"""The project's own MQTT broker (``brokers/mqtt_broker``) for ``citysense up`` without Mosquitto.

A child process like Mosquitto would be (``python -m brokers.mqtt_broker``),
so it has a core of its own and ``up`` stops it last. Same accounts and rights
as the Mosquitto of ``deploy/local``: the service accounts' ACL from
``citysense/broker_auth.py``, and one ``user`` section per device allowing
exactly its own uplink (write) and downlink (read) topic; devices must use
their id as client id. Persistent sessions are saved on a clean stop
(``sessions.json``) and read back at start; a crash loses what they held
since (as it does what the in-memory bus held).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.broker_auth import BRIDGE_USER, LOADGEN_USER, acl_text, kind_of
from citysense.exceptions import ConfigurationError


def _hash(password: str) -> str:
    from simulators.scenario_registry import mosquitto_hash

    return mosquitto_hash(password, secrets.token_bytes(12))


@dataclass
class EmbeddedBroker:
    root: Path
    port: int
    _process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def configure(self, users: dict[str, str], devices: Iterable[tuple[str, str, str]]) -> None:
        """Password file (hashed) and ACL, both 0600 in a 0700 directory. ``users``: the
        service accounts and their passwords; ``devices``: (device id, kind, password hash)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        listed = list(devices)
        lines = [f"{name}:{_hash(pw)}" for name, pw in users.items()]
        lines += [f"{device}:{hashed}" for device, _, hashed in listed]
        acl = [acl_text()]
        for device, kind, _ in listed:
            if kind_of(device) == kind:  # a device whose id and kind disagree gets no rights
                acl.append(f"user {device}\ntopic write devices/{kind}/{device}/up\n"
                           f"topic read devices/{kind}/{device}/down\n")
        for name, text in (("passwd", "\n".join(lines) + "\n"), ("acl", "".join(acl))):
            path = self.root / name
            path.write_text(text)
            path.chmod(0o600)

    def start(self, timeout_s: float = 10.0) -> None:
        log = open(self.root.parent / "mqtt-broker.log", "ab")  # noqa: SIM115 - owned by the child
        self._process = subprocess.Popen(
            [sys.executable, "-m", "brokers.mqtt_broker", "--port", str(self.port),
             "--password-file", str(self.root / "passwd"), "--acl-file", str(self.root / "acl"),
             "--pid-file", str(self.root / "broker.pid"), "--state-file", str(self.root / "sessions.json"),
             "--free-client-ids", f"{BRIDGE_USER},{LOADGEN_USER}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches up, which stops the broker last
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise ConfigurationError(
                    f"the embedded MQTT broker exited at start ({self._process.returncode}); see "
                    f"{self.root.parent / 'mqtt-broker.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ConfigurationError(f"the embedded MQTT broker did not listen on 127.0.0.1:{self.port} "
                                 f"in {timeout_s:.0f}s")

    def stop_orphan(self) -> bool:
        """Stop a broker a killed ``up`` left running on this directory; True if there was one."""
        try:
            pid = int((self.root / "broker.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return False
        if str(self.root / "passwd").encode() not in cmdline:
            return False  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        return True

    def stop(self) -> None:
        """SIGTERM, then wait; idempotent."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
