"""The broker rights generated for each account (citysense/broker_auth.py)."""

from __future__ import annotations

from typing import Any

from citysense.broker_auth import acl_text, dynsec_config, kind_of


def _by_name(items: Any, key: str) -> dict[str, Any]:
    return {item[key]: item for item in items}


def test_a_device_gets_its_client_id_and_one_role_with_exactly_its_topics() -> None:
    config = dynsec_config({"air-0001": "air", "mtr-L000003": "meter"})
    clients = _by_name(config["clients"], "username")
    roles = _by_name(config["roles"], "rolename")
    assert clients["air-0001"] == {"username": "air-0001", "clientid": "air-0001",
                                   "roles": [{"rolename": "device:air-0001"}]}
    acls = {(a["acltype"], a["topic"], a["allow"]) for a in roles["device:mtr-L000003"]["acls"]}
    assert acls == {
        ("publishClientSend", "devices/meter/mtr-L000003/up", True),
        ("publishClientReceive", "devices/meter/mtr-L000003/down", True),
        ("subscribeLiteral", "devices/meter/mtr-L000003/down", True),
        ("subscribePattern", "#", False),
    }
    assert "password" not in clients["air-0001"]  # the password file authenticates
    assert not any(config["defaultACLAccess"][k] for k in ("publishClientSend", "publishClientReceive",
                                                            "subscribe"))


def test_services_are_not_bound_to_a_client_id_and_only_the_bridge_may_subscribe() -> None:
    config = dynsec_config({})
    clients = _by_name(config["clients"], "username")
    roles = _by_name(config["roles"], "rolename")
    assert "clientid" not in clients["citysense-bridge"] and "clientid" not in clients["citysense-loadgen"]
    assert [a["allow"] for a in roles["loadgen"]["acls"]] == [False]
    allowed = {a["topic"] for a in roles["bridge"]["acls"] if a["allow"]}
    assert "$share/+/devices/#" in allowed and "#" not in allowed
    assert "user citysense-loadgen\ntopic write devices/+/+/up" in acl_text()


def test_kind_from_id_prefix() -> None:
    assert (kind_of("aws-L000001"), kind_of("chg-00001"), kind_of("zz-1")) == ("weather", "charger", None)
