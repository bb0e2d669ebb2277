"""Per-device MQTT credentials derived from one platform secret.

A device's password is HMAC-SHA256(secret, device_id), truncated: the
broker's password file and the simulators derive the same value, and no
password is ever stored in the repository. The secret comes from
``CITYSENSE_DEVICE_SECRET`` (``deploy/local`` generates one per machine).
"""

from __future__ import annotations

import hashlib
import hmac


def device_password(secret: str, device_id: str) -> str:
    return hmac.new(secret.encode(), device_id.encode(), hashlib.sha256).hexdigest()[:32]
