from __future__ import annotations

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.services


def test_overview(api: Api) -> None:
    with api.client() as c:
        r = c.get("/api/v1/overview")
        assert r.status_code == 200, r.text
        print(r.json())
