"""Persistent sessions across a clean restart of the embedded broker.

On a clean stop the broker writes every persistent session (subscriptions,
messages in flight and queued) to one JSON file, atomically (temporary file,
fsync, rename); at start it reads it back, so a client with a persistent
session finds its subscriptions and messages again, as with Mosquitto's
``persistence true``. A crash keeps only what the last clean stop wrote.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

from brokers.mqtt_broker.exceptions import AccessFileError
from brokers.mqtt_broker.packets import Publish
from brokers.mqtt_broker.sessions import Session, SubscriptionTree

FORMAT = 2  # 2: raw properties keep their length prefix


def _message(msg: Publish, qos: int) -> list[Any]:
    return [msg.topic, base64.b64encode(msg.payload).decode(), qos,
            base64.b64encode(msg.raw_properties).decode()]


def _publish(item: list[Any]) -> tuple[Publish, int]:
    topic, payload, qos, props = item
    return Publish(topic, base64.b64decode(payload), qos, raw_properties=base64.b64decode(props)), qos


def save(sessions: dict[str, Session], path: Path) -> int:
    """Write the persistent sessions; returns how many messages they hold."""
    kept, held = [], 0
    for s in sessions.values():
        if not s.persistent:
            continue
        held += len(s.inflight) + len(s.queue)
        kept.append({
            "client_id": s.client_id, "expiry_s": s.expiry_s, "max_inflight": s.max_inflight,
            "max_queued": s.max_queued,
            "subscriptions": [[full, g, f, q] for full, (g, f, q) in s.subscriptions.items()],
            "inflight": [[pid, *_message(m, q)] for pid, (m, q) in s.inflight.items()],
            "queue": [_message(m, q) for m, q in s.queue],
        })
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT, "sessions": kept}, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.chmod(0o600)
    os.replace(tmp, path)
    return held


def load(path: Path, tree: SubscriptionTree) -> dict[str, Session]:
    """Sessions saved by ``save``, their subscriptions added to ``tree``; {} without a file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AccessFileError(f"cannot read the broker's saved sessions {path}: {exc}") from exc
    if data.get("format") != FORMAT:
        raise AccessFileError(f"{path}: saved sessions of unknown format {data.get('format')!r}")
    out, now = {}, time.monotonic()
    for item in data["sessions"]:
        s = Session(item["client_id"], True, item["max_inflight"], item["max_queued"],
                    item["expiry_s"], disconnected_at=now)
        for full, group, topic_filter, qos in item["subscriptions"]:
            s.subscriptions[full] = (group, topic_filter, qos)
            tree.add(s, group, topic_filter, qos)
        for pid, *message in item["inflight"]:
            s.inflight[pid] = _publish(message)
            s.next_id = pid % 65535 + 1
        s.queue.extend(_publish(m) for m in item["queue"])
        out[s.client_id] = s
    return out
