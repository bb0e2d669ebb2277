#!/usr/bin/env python3
"""Write a mosquitto 2.0 password file (stdlib only).

Format (same as `mosquitto_passwd`): ``user:$7$101$<salt b64>$<hash b64>``
where $7 = PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, 64-byte key.

Entries:
  citysense-bridge, citysense-loadgen   password CITYSENSE_MQTT_BRIDGE_PASSWORD
  air-0000 .. air-0099 (+ --devices-file) password device_password(id)

Secrets come from the environment, else from $STATE/secrets.env
(STATE = $CITYSENSE_STATE_DIR or <project root>/.state). They are never
accepted on the command line. After rewriting the live file, run
`deploy/local/mosquitto.sh reload` so the broker re-reads it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

ITERATIONS = 101
SALT_LEN = 12
DKLEN = 64
SERVICE_USERS = ("citysense-bridge", "citysense-loadgen")
DEFAULT_DEVICES = [f"air-{i:04d}" for i in range(100)]
SECRET_NAMES = ("CITYSENSE_MQTT_BRIDGE_PASSWORD", "CITYSENSE_DEVICE_SECRET")
# The rule of citysense/device_ids.py, copied (this tool is stdlib-only); a unit test keeps
# the two equal.
MAX_DEVICE_ID_LEN = 64
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def valid_device_id(device_id: str) -> bool:
    return len(device_id) <= MAX_DEVICE_ID_LEN and re.fullmatch(DEVICE_ID_PATTERN, device_id) is not None


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Return the `$7$...` string mosquitto stores for `password`."""
    salt = secrets.token_bytes(SALT_LEN) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS, DKLEN)
    b64salt = base64.b64encode(salt).decode()
    b64hash = base64.b64encode(dk).decode()
    return f"$7${ITERATIONS}${b64salt}${b64hash}"


def device_password(device_secret: str, device_id: str) -> str:
    """MQTT password of a device: first 32 hex chars of HMAC-SHA256(secret, id)."""
    mac = hmac.new(device_secret.encode(), device_id.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def load_secrets() -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    state = Path(os.environ.get("CITYSENSE_STATE_DIR") or root / ".state")
    found: dict[str, str] = {}
    secrets_file = state / "secrets.env"
    if secrets_file.exists():
        for line in secrets_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key in SECRET_NAMES:
                found[key] = value
    for name in SECRET_NAMES:
        if os.environ.get(name):
            found[name] = os.environ[name]
    missing = [n for n in SECRET_NAMES if not found.get(n)]
    if missing:
        sys.exit(f"error: {', '.join(missing)} not set and not in {secrets_file}")
    return found


def read_devices(path: str | None) -> list[str]:
    devices = list(DEFAULT_DEVICES)
    if path:
        for line in Path(path).read_text().splitlines():
            dev = line.strip()
            if not dev or dev.startswith("#"):
                continue
            # ':' separates user from hash; '+', '#', '/' would break the ACL pattern; a
            # long id stalls storage (PostgreSQL refuses index entries over ~2.7 kB).
            if not valid_device_id(dev):
                sys.exit(f"error: invalid device id {dev[:80]!r} in {path}: at most "
                         f"{MAX_DEVICE_ID_LEN} ASCII letters, digits, '.', '_' or '-'")
            if dev not in devices:
                devices.append(dev)
    return devices


def write_atomic(out: Path, text: str) -> None:
    """Replace `out` atomically (mode 600), keeping the old file's owner so a
    broker that dropped privileges can still read it after a reload."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.stat() if out.exists() else None
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        if old is not None and os.geteuid() == 0:
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="password file to write")
    ap.add_argument("--devices-file", help="extra device ids, one per line")
    args = ap.parse_args(argv)

    sec = load_secrets()
    lines = [f"{user}:{hash_password(sec['CITYSENSE_MQTT_BRIDGE_PASSWORD'])}" for user in SERVICE_USERS]
    for dev in read_devices(args.devices_file):
        pw = device_password(sec["CITYSENSE_DEVICE_SECRET"], dev)
        lines.append(f"{dev}:{hash_password(pw)}")
    write_atomic(Path(args.out), "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
