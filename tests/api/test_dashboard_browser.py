"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The page loads with an operator key, the overview's online count rises after uplinks of newly
registered devices go through MQTT -> bridge -> Kafka -> normaliser -> writer, an alert is
acknowledged by a click, the language switches, and a screenshot is saved and checked.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

from brokers.mqtt import MqttClient, MqttConfig
from citysense.credentials import device_password
from citysense.settings import CommonSettings
from simulators.runner import interleaved_air_uplinks
from tests.api.conftest import Api
from tests.conftest import ServiceEnv
from tests.integration.pipeline import running_pipeline

pytestmark = [pytest.mark.services, pytest.mark.slow]
CHROMIUM = os.environ.get("CITYSENSE_CHROMIUM", "/usr/bin/chromium")
NEW = [f"air-{i:04d}" for i in range(90, 95)]  # in the broker's passwd file, not in the county
V1 = "/api/v1"


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


@pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
                    reason=f"{CHROMIUM} missing: run deploy/local/browser.sh (apt-get install chromium)")
async def test_dashboard_live_in_chromium(api: Api, service_env: ServiceEnv, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    with api.client("admin") as admin:
        for device_id in NEW:
            r = admin.post(f"{V1}/devices", json={
                "device_id": device_id, "kind": "air", "profile": "air", "network": "lte-cat1",
                "township": "渠江街道", "district": "渠江片区", "lat": 30.84, "lon": 106.97,
                "report_interval_s": 60})
            assert r.status_code == 201, r.text
    unique = api.settings.topic_readings.split(".")[1]
    pipeline_settings = CommonSettings(
        database_url=api.db_url, kafka_bootstrap=service_env.kafka_bootstrap, mqtt_url=service_env.mqtt_url,
        topic_raw=f"test.{unique}.raw", topic_readings=api.settings.topic_readings,
        topic_dlq=f"test.{unique}.dlq", raw_partitions=1, readings_partitions=1, dlq_partitions=1)
    first_alert = api.county.alert_ids[0]

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(api.url)
            assert await page.inner_text("h1") == "城市感知 · 一张屏"
            await page.fill("#key", api.county.tokens["operator"])
            await page.click("#keysave")
            await page.wait_for_function("document.getElementById('who').textContent.includes('operator')")
            await page.wait_for_function("/^\\d+$/.test(document.getElementById('t-online').textContent)")
            online_before = int(await page.inner_text("#t-online"))
            assert int(await page.inner_text("#t-alerts")) == 4

            # Each device logs in as itself, its id also its MQTT client id (a broker may insist on it).
            devices = {d: MqttClient(MqttConfig(url=service_env.mqtt_url, username=d, client_id=d,
                                                password=device_password(service_env.device_secret, d)))
                       for d in NEW}
            await asyncio.gather(*(c.start() for c in devices.values()))
            try:
                async with running_pipeline(pipeline_settings, bridge_user=service_env.bridge_username,
                                            bridge_password=service_env.bridge_password,
                                            database_url=api.db_url, share_group=f"test-{unique}"):
                    minute = 60 * 10**9
                    start = (time.time_ns() // minute - 3) * minute
                    await asyncio.gather(*(devices[u.device_id].publish(u.topic, u.payload, 1)
                                           for u in interleaved_air_uplinks(NEW, 3, 7, start)))
                    await page.wait_for_function(
                        "Number(document.getElementById('t-online').textContent) >= "
                        f"{online_before + len(NEW)}",
                        timeout=60_000)
            finally:
                await asyncio.gather(*(c.stop() for c in devices.values()))

            row = page.locator(f"tr[data-alert='{first_alert}']")
            await row.locator("button.ack").click()
            await page.wait_for_function(
                f"document.querySelector(\"tr[data-alert='{first_alert}']\").textContent.includes('已确认')")
            with api.client("viewer") as c:
                alert = c.get(f"{V1}/alerts/{first_alert}").json()["alert"]
            assert alert["acknowledged"] and alert["acknowledged_by"] == "key:test-operator"

            assert await page.locator("#map circle.cell").count() > 10
            assert await page.locator("#map path.bridge").count() == 22
            assert await page.locator("#bridges .card").count() == 22
            assert await page.locator("#chargers tbody tr").count() == api.county.stations
            await page.wait_for_selector("#chart path.series")
            await page.click("#lang")
            assert await page.inner_text("h1") == "citysense · one screen"
            shot = Path(os.environ.get("CITYSENSE_SCREENSHOT_DIR", str(tmp_path))) / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert _png_size(shot)[0] == 1400 and shot.stat().st_size > 20_000
            assert errors == []

            viewer = await browser.new_page()  # a viewer sees the alerts but no button to acknowledge
            await viewer.goto(api.url)
            await viewer.fill("#key", api.county.tokens["viewer"])
            await viewer.click("#keysave")
            await viewer.wait_for_selector("#alerts tbody tr")
            assert await viewer.locator("#alerts button.ack").count() == 0
            assert await viewer.locator("#alerts tbody tr").count() == 4
        finally:
            await browser.close()
