"""Registry import: validation at the edge, idempotent upsert, the CLI verb."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pydantic import ValidationError

from storage import registry
from tests.storage.conftest import Store
from tests.storage.registry_sample import sample_json, sample_registry

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]


async def _devices(store: Store) -> list[tuple[object, ...]]:
    async with store.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT device_id, kind, site_id, district, report_interval_s, credential_hash, metadata,"
            " active, updated_at FROM devices ORDER BY device_id")
        return list(await cur.fetchall())


async def test_import_twice_changes_nothing_and_a_change_updates(store: Store) -> None:
    parsed = registry.parse(sample_json())
    async with store.pool.connection() as conn:
        assert await registry.import_registry(conn, parsed) == (2, 4)
    first = await _devices(store)
    assert [d[0] for d in first] == ["air-1", "air-2", "ev-1", "strain-1"]
    assert first[3][1:8] == ("bridge_strain", "bridge-01", "North", 900.0, "sha256:abc", {"span": 2}, True)

    async with store.pool.connection() as conn:
        await registry.import_registry(conn, parsed)
    assert await _devices(store) == first  # not even updated_at moved

    changed = sample_registry()
    changed["devices"][0]["report_interval_s"] = 120
    async with store.pool.connection() as conn:
        await registry.import_registry(conn, registry.Registry.model_validate(changed))
    after = await _devices(store)
    assert after[0][4] == 120.0
    assert after[0][8] != first[0][8]  # updated_at moved
    assert after[1:] == first[1:]


@pytest.mark.parametrize(("path", "value", "message"), [
    (("devices", 0, "report_interval_s"), -5, "greater than 0"),
    (("sites", 0, "kind"), "lighthouse", "bridge"),
    (("devices", 2, "site_id"), "nowhere", "unknown sites: nowhere"),
    (("devices", 1, "device_id"), "air-1", "duplicate device_id"),
    (("devices", 0, "lat"), 123.0, "less than or equal to 90"),
])
def test_invalid_registries_are_refused(path: tuple[str, int, str], value: object, message: str) -> None:
    doc = sample_registry()
    doc[path[0]][path[1]][path[2]] = value
    with pytest.raises(ValidationError, match=message):
        registry.parse(json.dumps(doc))


def test_devices_import_command_reads_stdin(database: str) -> None:
    env = {**os.environ, "CITYSENSE_DATABASE_URL": database}
    command = str(Path(sys.executable).parent / "citysense")
    ok = subprocess.run([command, "devices", "import", "-"], input=sample_json(), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "imported 2 sites and 4 devices" in ok.stdout
    with psycopg.connect(database) as conn:
        assert conn.execute("SELECT count(*) FROM devices").fetchone() == (4,)
    bad = subprocess.run([command, "devices", "import", "-"], input='{"scenario": "x"}', cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2
    assert "invalid registry" in bad.stderr
