"""What a device id may be: short, ASCII letters, digits and ``. _ -``.

A device id is an MQTT topic level, a Kafka key, a login in Mosquitto's
password file and the leading column of every primary key in storage.
PostgreSQL refuses a btree entry over ~2.7 kB (SQLSTATE 54000), ``:``
separates user from hash in the password file, ``/ + #`` are topic syntax,
and odd Unicode makes look-alike ids. One rule, checked at the normaliser
(``bad_device_id``), at registration and in the password tool
(``deploy/local/mqtt_passwd.py`` imports this module, which is stdlib-only).
"""

from __future__ import annotations

import re

MAX_DEVICE_ID_LEN = 64
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


def device_id_problem(device_id: str) -> str | None:
    """Why ``device_id`` is not acceptable, or None if it is."""
    if len(device_id) > MAX_DEVICE_ID_LEN:
        return f"device id is {len(device_id)} characters long, over {MAX_DEVICE_ID_LEN}"
    if _DEVICE_ID.fullmatch(device_id) is None:
        return (f"device id {device_id!r} must start with an ASCII letter or digit and hold only "
                "ASCII letters, digits, '.', '_' and '-'")
    return None


def is_valid_device_id(device_id: str) -> bool:
    return len(device_id) <= MAX_DEVICE_ID_LEN and _DEVICE_ID.fullmatch(device_id) is not None
