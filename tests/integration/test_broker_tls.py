"""Devices over TLS: the broker's TLS listener (certificate from the local CA that
deploy/local makes), password login over it, and the same rules as on the plain port."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from brokers.exceptions import BrokerError, BrokerUnavailableError
from brokers.mqtt import MqttClient, MqttConfig
from brokers.mqtt_base import MqttClientApi, MqttClientKind, make_mqtt_client
from citysense.credentials import device_password
from tests.conftest import ServiceEnv

pytestmark = pytest.mark.services


def tls_device(env: ServiceEnv, device_id: str, *, password: str | None = None,
               ca_file: str | None = None, url: str | None = None,
               kind: MqttClientKind = "paho") -> MqttClientApi:
    return make_mqtt_client(kind, MqttConfig(
        url=url or env.raw["CITYSENSE_MQTT_TLS_URL"], username=device_id, client_id=device_id,
        password=password if password is not None else device_password(env.device_secret, device_id),
        ca_file=ca_file or env.raw["CITYSENSE_MQTT_CA_FILE"],
    ))


async def test_device_publishes_over_tls_and_the_bridge_receives_it(
    service_env: ServiceEnv, unique: str, mqtt_client_kind: MqttClientKind,
) -> None:
    sub = make_mqtt_client(mqtt_client_kind, MqttConfig(
        url=service_env.mqtt_url, username=service_env.bridge_username, password=service_env.bridge_password,
        client_id=f"citysense-bridge-{unique}"), manual_ack=True)
    await sub.start()
    dev = MqttClient(MqttConfig(  # publish_many: the paho client's
        url=service_env.raw["CITYSENSE_MQTT_TLS_URL"], username="air-0085", client_id="air-0085",
        password=device_password(service_env.device_secret, "air-0085"),
        ca_file=service_env.raw["CITYSENSE_MQTT_CA_FILE"]))
    try:
        await sub.subscribe(f"$share/test-{unique}/devices/+/+/up", qos=1)
        await dev.start()
        await dev.publish_many([("devices/air/air-0085/up", b'{"seq":%d}' % i) for i in range(20)])
        with pytest.raises(BrokerError, match="subscription refused"):
            await dev.subscribe(f"$share/test-{unique}/devices/+/+/up", qos=1)
        got: list[str] = []
        while len(got) < 20 and (batch := await sub.receive_batch(100, 5.0)):
            got.extend(m.topic for m in batch)
            sub.ack(batch)
    finally:
        await dev.stop()
        await sub.stop()
    assert got == ["devices/air/air-0085/up"] * 20


async def test_wrong_password_over_tls_is_refused(
    service_env: ServiceEnv, mqtt_client_kind: MqttClientKind,
) -> None:
    dev = tls_device(service_env, "air-0086", password="f" * 32, kind=mqtt_client_kind)
    with pytest.raises(BrokerError, match="connect refused"):
        await dev.start()
    await dev.stop()


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A throw-away CA made by the test: (certificate, key)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    return cert, key


@pytest.fixture
def other_ca(tmp_path: Path) -> tuple[Path, Path]:
    return make_ca(tmp_path, "not-the-citysense-ca")


async def test_a_client_that_trusts_another_ca_refuses_the_broker(
    service_env: ServiceEnv, other_ca: tuple[Path, Path], mqtt_client_kind: MqttClientKind,
) -> None:
    dev = tls_device(service_env, "air-0087", ca_file=str(other_ca[0]), kind=mqtt_client_kind)
    with pytest.raises(BrokerUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        await dev.start()
    await dev.stop()


async def test_plain_mqtt_is_not_spoken_on_the_tls_port(
    service_env: ServiceEnv, mqtt_client_kind: MqttClientKind,
) -> None:
    plain_url = service_env.raw["CITYSENSE_MQTT_TLS_URL"].replace("mqtts://", "mqtt://")
    dev = make_mqtt_client(mqtt_client_kind, MqttConfig(
        url=plain_url, username="air-0088", client_id="air-0088",
        password=device_password(service_env.device_secret, "air-0088")))
    with pytest.raises(BrokerError):
        await dev.start()
    await dev.stop()


def device_cert(directory: Path, ca: tuple[Path, Path], device_id: str) -> tuple[str, str]:
    """A client certificate with CN = ``device_id`` signed by ``ca``: (certificate, key) paths."""
    key, csr, cert = (directory / f"{device_id}.{ext}" for ext in ("key", "csr", "crt"))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={device_id}", "-keyout", str(key), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
            "-days", "1", "-out", str(cert))
    return str(cert), str(key)


@pytest.fixture
def local_ca(service_env: ServiceEnv) -> tuple[Path, Path]:
    """The CA deploy/local made (its key signs device certificates, as an operator would)."""
    ca_cert = Path(service_env.raw["CITYSENSE_MQTT_CA_FILE"])
    return ca_cert, ca_cert.with_name("ca.key")


def cert_device(env: ServiceEnv, cert: tuple[str, str], client_id: str,
                kind: MqttClientKind = "paho") -> MqttClientApi:
    return make_mqtt_client(kind, MqttConfig(url=env.raw["CITYSENSE_MQTT_TLS_CERT_URL"], client_id=client_id,
                                 ca_file=env.raw["CITYSENSE_MQTT_CA_FILE"],
                                 cert_file=cert[0], key_file=cert[1]))


async def test_device_logs_in_by_certificate_as_its_cn_and_nothing_more(
    service_env: ServiceEnv, local_ca: tuple[Path, Path], tmp_path: Path, unique: str,
    mqtt_client_kind: MqttClientKind,
) -> None:
    sub = make_mqtt_client(mqtt_client_kind, MqttConfig(
        url=service_env.mqtt_url, username=service_env.bridge_username, password=service_env.bridge_password,
        client_id=f"citysense-bridge-{unique}"), manual_ack=True)
    await sub.start()
    # It asks for the bridge's client id: the broker gives it its CN instead, so the bridge stays.
    dev = cert_device(service_env, device_cert(tmp_path, local_ca, "air-0089"), f"citysense-bridge-{unique}",
                      mqtt_client_kind)
    try:
        await sub.subscribe(f"$share/test-{unique}/devices/+/+/up", qos=1)
        await dev.start()
        await dev.publish("devices/air/air-0089/up", b"{}", qos=1)
        with pytest.raises(BrokerError, match="0x87"):
            await dev.publish("devices/env/air-0089/up", b"{}", qos=1)
        with pytest.raises(BrokerError, match="0x87"):
            await dev.publish("devices/air/air-0088/up", b"{}", qos=1)
        with pytest.raises(BrokerError, match="subscription refused"):
            await dev.subscribe("#", qos=1)
        batch = await sub.receive_batch(10, 5.0)
        sub.ack(batch)
        more = await sub.receive_batch(10, 0.5)
    finally:
        await dev.stop()
        await sub.stop()
    assert [m.topic for m in batch + more] == ["devices/air/air-0089/up"]
    assert sub.disconnects == 1  # its own stop, no takeover


async def test_certificate_from_another_ca_or_none_is_refused(
    service_env: ServiceEnv, other_ca: tuple[Path, Path], tmp_path: Path,
) -> None:
    forged = cert_device(service_env, device_cert(tmp_path, other_ca, "air-0089"), "air-0089")
    with pytest.raises(BrokerError):
        await forged.start()
    await forged.stop()
    env = service_env.raw
    anonymous = MqttClient(MqttConfig(url=env["CITYSENSE_MQTT_TLS_CERT_URL"], client_id="air-0089",
                                      ca_file=env["CITYSENSE_MQTT_CA_FILE"]))
    with pytest.raises(BrokerError):
        await anonymous.start()
    await anonymous.stop()
