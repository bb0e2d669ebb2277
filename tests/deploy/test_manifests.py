"""deploy/: the compose file and the Kubernetes manifests render and validate against their schemas,
and every CITYSENSE_ variable they set is a setting some deployable reads.

No container engine or cluster is needed: compose is interpolated here (``${VAR:?}`` must name
a variable of example.env) and validated with the Compose Specification's JSON schema (vendored,
see compose-spec.NOTICE); manifests with ``kubernetes-validate`` (strict: unknown fields fail).
KEDA's ScaledObject has no schema there, so its shape is checked by hand.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from citysense.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.31"
SETTINGS_MODULES = ("ingest.settings", "storage.settings", "simulators.settings", "alerts.settings",
                    "api.settings", "citysense.launch.up_settings")
VAR = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def example_env() -> dict[str, str]:
    names = [line.split("=", 1)[0] for line in (COMPOSE / "example.env").read_text().splitlines()
             if line and not line.startswith("#")]
    return {n: f"test-{n.lower()}" for n in names}


def render_compose(env: dict[str, str]) -> dict[str, Any]:
    """Interpolate as compose does: ${VAR:?msg} fails when VAR is unset, ${VAR:-x} defaults."""
    text = (COMPOSE / "compose.yaml").read_text()

    def sub(m: re.Match[str]) -> str:
        whole, name = m.group(0), m.group(1)
        if name in env:
            return env[name]
        if ":-" in whole:
            return whole.split(":-", 1)[1][:-1]
        raise KeyError(f"{name} is not set: {whole}")

    def walk(node: Any) -> Any:  # values only, after YAML parsing (comments are not interpolated)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return VAR.sub(sub, node.replace("$$", "\0")).replace("\0", "$")
        return node

    data = walk(yaml.safe_load(text))
    assert isinstance(data, dict)
    return data


def k8s_docs() -> list[dict[str, Any]]:
    docs = [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert docs
    return docs


def known_settings() -> set[str]:
    for module in SETTINGS_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    todo: list[type[CommonSettings]] = [CommonSettings]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        for field_name, info in cls.model_fields.items():
            names.add(f"CITYSENSE_{field_name.upper()}")
            alias = info.validation_alias
            for choice in getattr(alias, "choices", [alias] if isinstance(alias, str) else []):
                if isinstance(choice, str):
                    names.add(choice.upper())
    # Receivers' URLs and secrets are variables the rule pack names (url_env, secret_env).
    from alerts.cli import DEFAULT_RULES
    from alerts.rule_file import load

    for receiver in load(DEFAULT_RULES).receivers:
        names |= {n for n in (receiver.url_env, receiver.secret_env) if n}
    return names


def test_compose_renders_and_matches_the_compose_spec() -> None:
    data = render_compose(example_env())
    schema = json.loads((Path(__file__).parent / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(data)  # the file names draft-07 by a URL without "#"
    services = data["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "timescaledb", "mosquitto", "bridge", "normaliser",
            "writer", "alerts", "alert-delivery", "api", "prometheus", "grafana", "migrate"} <= set(services)
    for name in ("bridge", "normaliser", "writer", "alerts", "api"):
        assert services[name]["deploy"]["replicas"] >= 2, name
        assert "healthcheck" in services[name], name
    assert services["writer"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert all(s["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
               for n, s in services.items() if n.startswith("kafka-"))


def test_compose_refuses_to_start_without_a_secret() -> None:
    env = example_env()
    for name in env:
        partial = {k: v for k, v in env.items() if k != name}
        with pytest.raises(KeyError, match=name):
            render_compose(partial)


def test_compose_holds_no_secret_values() -> None:
    text = (COMPOSE / "compose.yaml").read_text()
    for line in text.splitlines():
        key = line.strip().split(":", 1)[0]
        if re.search(r"PASSWORD|SECRET", key) and ":" in line:
            assert "${" in line, f"a literal secret in compose.yaml: {line.strip()}"


def test_manifests_validate_against_kubernetes_schemas() -> None:
    kinds: dict[str, list[str]] = {}
    for doc in k8s_docs():
        kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    deployments = set(kinds["Deployment"])
    assert {"citysense-bridge", "citysense-normaliser", "citysense-writer", "citysense-alerts",
            "citysense-api"} <= deployments
    assert set(kinds["PodDisruptionBudget"]) == deployments
    for doc in k8s_docs():
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                assert {"readinessProbe", "livenessProbe", "resources"} <= set(c), c["name"]
                secret_refs = [e for e in c.get("env", []) if "valueFrom" in e]
                assert all("secretKeyRef" in e["valueFrom"] for e in secret_refs)


def test_keda_scales_every_consumer_stage_on_its_group_lag() -> None:
    from alerts.settings import AlertSettings
    from ingest.settings import NormaliserSettings
    from storage.settings import WriterSettings

    groups = {"citysense-normaliser": NormaliserSettings().normalise_group,
              "citysense-writer": WriterSettings().writer_group,
              "citysense-alerts": AlertSettings().alerts_group}
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in k8s_docs() if d["kind"] == "ScaledObject"}
    assert set(scaled) == set(groups)
    partitions = 24  # CITYSENSE_*_PARTITIONS in config.yaml: more consumers than partitions idle
    for target, doc in scaled.items():
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        (trigger,) = doc["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == groups[target]
        assert int(trigger["metadata"]["lagThreshold"]) > 0
        assert doc["spec"]["maxReplicaCount"] <= partitions


def test_every_citysense_variable_set_is_a_known_setting() -> None:
    known = known_settings()
    used: set[str] = set()
    for service in render_compose(example_env())["services"].values():
        used |= {k for k in service.get("environment", {}) if k.startswith("CITYSENSE_")}
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            used |= set(doc["data"])
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            used |= {e["name"] for e in c.get("env", [])}
    assert used, "no CITYSENSE_ variable found"
    assert used <= known, f"not a setting of any deployable: {sorted(used - known)}"
