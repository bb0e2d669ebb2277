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

import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.broker_auth import BRIDGE_USER, LOADGEN_USER, acl_text, kind_of
from citysense.launch.child_process import start_child, stop_child, stop_orphan
from citysense.launch.embedded_mqtt import hash_password


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
        lines = [f"{name}:{hash_password(pw)}" for name, pw in users.items()]
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
        self._process = start_child(
            [sys.executable, "-m", "brokers.mqtt_broker", "--port", str(self.port),
             "--password-file", str(self.root / "passwd"), "--acl-file", str(self.root / "acl"),
             "--pid-file", str(self.root / "broker.pid"), "--state-file", str(self.root / "sessions.json"),
             "--free-client-ids", f"{BRIDGE_USER},{LOADGEN_USER}"],
            self.root.parent / "mqtt-broker.log", self.port, "the embedded MQTT broker", timeout_s)

    def stop_orphan(self) -> bool:
        """Stop a broker a killed ``up`` left running on this directory; True if there was one."""
        return stop_orphan(self.root / "broker.pid", self.root / "passwd")

    def stop(self) -> None:
        """SIGTERM (the broker saves its sessions), then wait; idempotent."""
        process, self._process = self._process, None
        stop_child(process)
