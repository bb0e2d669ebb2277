#!/usr/bin/env python3
"""Write mosquitto 2.0's password file, ACL file and dynamic-security config (stdlib only).

Password file format (same as `mosquitto_passwd`): ``user:$7$101$<salt b64>$<hash b64>``
where $7 = PBKDF2-HMAC-SHA512, 101 iterations, 12-byte salt, 64-byte key.

Entries:
  citysense-bridge    password CITYSENSE_MQTT_BRIDGE_PASSWORD
  citysense-loadgen   password CITYSENSE_MQTT_LOADGEN_PASSWORD
  air-0000 .. air-0099 (+ --devices-file) password device_password(id)

The dynamic-security config (--dynsec-out) binds each device to ONE topic,
devices/<kind>/<id>/up (kind from the devices file, else from the id's prefix),
checks SUBSCRIBE (which `acl_file` never does) and binds each device's client id
to its id. The ACL file (--acl-out) has the service accounts' rights. See
deploy/local/README.md.

Secrets come from the environment, else from $STATE/secrets.env
(STATE = $CITYSENSE_STATE_DIR or <project root>/.state). They are never
accepted on the command line. `deploy/local/mosquitto.sh up` and `reload` run this
script themselves (with $STATE/mosquitto/devices.txt); `reload` restarts the broker,
because SIGHUP does not reload the dynamic-security plugin's client list.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path

ITERATIONS = 101
SALT_LEN = 12
DKLEN = 64
# The broker's rights live in citysense/broker_auth.py (stdlib only, shared with anything else
# that configures a Mosquitto for citysense); this script may run outside the venv.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from citysense.broker_auth import (  # noqa: E402
    BRIDGE_USER,
    KIND_BY_PREFIX,
    LOADGEN_USER,
    acl_text,
    dynsec_config,
    kind_of,
)

SERVICE_USERS = {
    BRIDGE_USER: "CITYSENSE_MQTT_BRIDGE_PASSWORD",
    LOADGEN_USER: "CITYSENSE_MQTT_LOADGEN_PASSWORD",
}
DEFAULT_DEVICES = [f"air-{i:04d}" for i in range(100)]
SECRET_NAMES = (*SERVICE_USERS.values(), "CITYSENSE_DEVICE_SECRET")

# The device-id rule of citysense/device_ids.py (stdlib only, so this tool may import it).
from citysense.device_ids import MAX_DEVICE_ID_LEN  # noqa: E402
from citysense.device_ids import is_valid_device_id as valid_device_id  # noqa: E402


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


def read_devices(path: str | None) -> dict[str, str]:
    """device id -> kind. A devices-file line is ``<id>`` or ``<kind> <id>``."""
    devices = {d: "air" for d in DEFAULT_DEVICES}
    if path:
        for line in Path(path).read_text().splitlines():
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            dev = fields[-1]
            # a long id stalls storage (PostgreSQL refuses index entries over ~2.7 kB).
            if not valid_device_id(dev):
                sys.exit(f"error: invalid device id {dev[:80]!r} in {path}: at most "
                         f"{MAX_DEVICE_ID_LEN} ASCII letters, digits, '.', '_' or '-'")
            kind = fields[0] if len(fields) == 2 else kind_of(dev)
            # ':' separates user from hash; '+', '#', '/' would break the ACL and topics.
            if len(fields) > 2 or any(c in dev for c in ":+#/") or not kind or any(c in kind for c in "+#/"):
                sys.exit(f"error: invalid device line {line!r} in {path} (want '<id>' or '<kind> <id>';"
                         f" a bare id needs one of the prefixes {', '.join(KIND_BY_PREFIX)})")
            if dev.startswith("citysense-"):
                sys.exit(f"error: device id {dev!r} in {path}: ids starting 'citysense-' are reserved")
            devices.setdefault(dev, kind)
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
    ap.add_argument("--acl-out", help="ACL file to write")
    ap.add_argument("--dynsec-out", help="dynamic-security JSON config to write")
    ap.add_argument("--devices-file", help="extra devices, one per line: '<id>' or '<kind> <id>'")
    args = ap.parse_args(argv)

    sec = load_secrets()
    devices = read_devices(args.devices_file)
    lines = [f"{user}:{hash_password(sec[name])}" for user, name in SERVICE_USERS.items()]
    for dev in devices:
        pw = device_password(sec["CITYSENSE_DEVICE_SECRET"], dev)
        lines.append(f"{dev}:{hash_password(pw)}")
    write_atomic(Path(args.out), "\n".join(lines) + "\n")
    if args.acl_out:
        write_atomic(Path(args.acl_out), acl_text())
    if args.dynsec_out:
        write_atomic(Path(args.dynsec_out), json.dumps(dynsec_config(devices), separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
