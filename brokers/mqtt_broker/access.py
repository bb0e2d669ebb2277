"""Who may log in and what each may read and write: Mosquitto's password and ACL files.

The embedded broker reads the same two files ``citysense up`` writes for
Mosquitto, so both brokers enforce one policy:

- password file: ``user:$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>`` lines;
- ACL file: ``user <name>`` then ``topic [read|write|readwrite] <filter>``
  lines for that user; ``pattern [read|write|readwrite] <filter>`` for every
  user, with ``%u`` (username) and ``%c`` (client id) substituted. A pattern
  whose substitution would contain a wildcard or ``/`` never matches, so a
  crafted username cannot widen its own rights.

Anonymous logins are refused. A subscription is allowed when one read rule
covers every topic its filter can match; a PUBLISH when a write rule matches
its topic.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from pathlib import Path

from brokers.mqtt_broker.exceptions import AccessFileError
from brokers.mqtt_broker.topics import covers
from brokers.mqtt_wire import topic_matches

READ, WRITE = 1, 2
_MODES = {"read": READ, "write": WRITE, "readwrite": READ | WRITE}


def _check_hash(stored: str, password: bytes) -> bool:
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, len(digest))
    return hmac.compare_digest(got, digest)


@dataclass(frozen=True, slots=True)
class Rule:
    mode: int
    topic_filter: str
    pattern: bool  # %u / %c substituted per client


@dataclass(slots=True)
class Access:
    passwords: dict[str, str] = field(default_factory=dict)
    user_rules: dict[str, list[Rule]] = field(default_factory=dict)
    patterns: list[Rule] = field(default_factory=list)
    # When set, every account but these (the service accounts) must use its username as client
    # id, so no device can take over another client's session (Mosquitto's dynsec ``clientid``).
    free_client_ids: frozenset[str] | None = None
    _checked: set[tuple[str, bytes]] = field(default_factory=set)

    @classmethod
    def from_files(cls, password_file: Path, acl_file: Path) -> Access:
        access = cls()
        try:
            password_lines = password_file.read_text().splitlines()
            acl_lines = acl_file.read_text().splitlines()
        except OSError as exc:
            raise AccessFileError(f"cannot read the broker's access files: {exc}") from exc
        for number, line in enumerate(password_lines, 1):
            if line.strip() and not line.startswith("#"):
                user, sep, hashed = line.partition(":")
                if not sep or not user:
                    raise AccessFileError(f"{password_file}:{number}: not 'user:hash'")
                access.passwords[user] = hashed.strip()
        access.load_acl(acl_lines, str(acl_file))
        return access

    def load_acl(self, lines: list[str], name: str = "acl") -> None:
        user: str | None = None
        for number, raw in enumerate(lines, 1):
            words = raw.split()
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "user" and len(words) == 2:
                user = words[1]
                continue
            if words[0] not in ("topic", "pattern") or len(words) not in (2, 3):
                raise AccessFileError(f"{name}:{number}: cannot read {raw.strip()!r}")
            mode = _MODES.get(words[1]) if len(words) == 3 else READ | WRITE
            if mode is None:
                raise AccessFileError(f"{name}:{number}: unknown access {words[1]!r}")
            rule = Rule(mode, words[-1], words[0] == "pattern")
            if rule.pattern:
                self.patterns.append(rule)
            elif user is None:
                raise AccessFileError(f"{name}:{number}: 'topic' before any 'user' line")
            else:
                self.user_rules.setdefault(user, []).append(rule)

    def authenticate(self, username: str | None, password: bytes | None) -> bool:
        if username is None or password is None or username not in self.passwords:
            return False
        key = (username, password)
        if key in self._checked:  # PBKDF2 per login; a device's reconnect storm pays it once
            return True
        if not _check_hash(self.passwords[username], password):
            return False  # failures are not cached: a guesser cannot grow the cache
        self._checked.add(key)
        return True

    def client_id_allowed(self, username: str, client_id: str) -> bool:
        free = self.free_client_ids
        return free is None or username in free or client_id == username

    def rules_for(self, username: str, client_id: str) -> tuple[tuple[int, str], ...]:
        """The (mode, filter) rules of one client, patterns substituted; taken once per connection."""
        out = [(r.mode, r.topic_filter) for r in self.user_rules.get(username, ())]
        unsafe = {"%u": any(c in username for c in "+#/"), "%c": any(c in client_id for c in "+#/")}
        for rule in self.patterns:
            if any(flag and key in rule.topic_filter for key, flag in unsafe.items()):
                continue
            out.append((rule.mode, rule.topic_filter.replace("%u", username).replace("%c", client_id)))
        return tuple(out)


def may_write(rules: tuple[tuple[int, str], ...], topic: str) -> bool:
    return any(mode & WRITE and topic_matches(f, topic) for mode, f in rules)


def may_subscribe(rules: tuple[tuple[int, str], ...], topic_filter: str) -> bool:
    return any(mode & READ and covers(f, topic_filter) for mode, f in rules)
