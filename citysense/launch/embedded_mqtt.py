"""Mosquitto for ``citysense up``: a child process with its own config in the data directory.

The same rights as ``deploy/local/mosquitto.sh``, from the same place
(``citysense/broker_auth.py``): no anonymous login, a password file (bridge,
load generator and every registry device, hashed), the dynamic-security
plugin's config (each device may publish only ``devices/<kind>/<id>/up``,
subscribe only to its own downlink, and must use its id as client id) and the
ACL file with the service accounts' rights (the bridge's canary topics
included). It keeps persistence on, in the data directory, so the bridge's
persistent session (and what is queued for it) survives a restart of ``up``.
As root it drops to ``nobody`` (``user`` in the config).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from citysense.broker_auth import acl_text, auth_config_lines, dynsec_config, find_dynsec_plugin
from citysense.exceptions import ConfigurationError
from citysense.launch.child_process import start_child, stop_child, stop_orphan

RUN_AS = "nobody"
AUTH_FILES = ("passwd", "acl", "dynamic-security.json")


def find_mosquitto() -> str | None:
    # Debian puts it in /usr/sbin, which a normal user's PATH usually lacks.
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)


def require_dynsec_plugin() -> str:
    plugin = find_dynsec_plugin()
    if plugin is None:
        # Without it Mosquitto 2.0 never checks SUBSCRIBE: a device could join the bridges'
        # shared subscription. Refuse rather than run a weaker broker.
        raise ConfigurationError(
            "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) was not found "
            "under /usr/lib: install Debian's package (apt-get install mosquitto), or point "
            "CITYSENSE_MQTT_URL at a broker")
    return plugin


def hash_password(password: str) -> str:
    """A password file line's hash (Mosquitto's PBKDF2-SHA512 ``$7$`` format), fresh salt."""
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

    def configure(self, users: dict[str, str], devices: Iterable[tuple[str, str, str]]) -> None:
        """Write config, password file (users' passwords hashed), dynamic-security config and
        ACL file. ``users``: the service accounts (``citysense-bridge``, ``citysense-loadgen``)
        and their passwords; ``devices``: (device id, kind, password hash)."""
        plugin = require_dynsec_plugin()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "store").mkdir(exist_ok=True)
        kinds: dict[str, str] = {}
        lines = [f"{name}:{hash_password(pw)}" for name, pw in users.items()]
        for device, kind, hashed in devices:
            lines.append(f"{device}:{hashed}")
            kinds[device] = kind
        passwd, acl, dynsec = (self.root / name for name in AUTH_FILES)
        passwd.write_text("\n".join(lines) + "\n")
        acl.write_text(acl_text())
        # Rewritten every start: the plugin keeps its client list from this file (no reload).
        dynsec.write_text(json.dumps(dynsec_config(kinds), separators=(",", ":")))
        user_line = f"user {RUN_AS}\n" if os.geteuid() == 0 else ""
        (self.root / "mosquitto.conf").write_text(
            f"{user_line}per_listener_settings false\n"
            f"listener {self.port} 127.0.0.1\n"
            + auth_config_lines(plugin, str(dynsec), str(passwd), str(acl)) +
            "max_inflight_messages 1000\nmax_queued_messages 100000\nmax_packet_size 262144\n"
            f"persistence true\npersistence_location {self.root / 'store'}/\nautosave_interval 30\n"
            f"pid_file {self.root / 'mosquitto.pid'}\n"
            "log_dest stdout\nconnection_messages false\n"
        )
        for name in AUTH_FILES:
            (self.root / name).chmod(0o600)
        if os.geteuid() == 0:  # mosquitto reads them after dropping to RUN_AS
            entry = pwd.getpwnam(RUN_AS)
            for path in (self.root, self.root / "store", *(self.root / n for n in AUTH_FILES),
                         *(self.root / "store").iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.root.chmod(0o700)

    def start(self, timeout_s: float = 10.0) -> None:
        self._process = start_child([self.executable, "-c", str(self.root / "mosquitto.conf")],
                                    self.root.parent / "mosquitto.log", self.port, "mosquitto", timeout_s)

    def stop_orphan(self) -> bool:
        """Stop a broker a killed ``up`` left running on this directory; True if there was one."""
        return stop_orphan(self.root / "mosquitto.pid", self.root / "mosquitto.conf")

    def stop(self) -> None:
        """SIGTERM (the broker saves its sessions), then wait; idempotent."""
        process, self._process = self._process, None
        stop_child(process)
