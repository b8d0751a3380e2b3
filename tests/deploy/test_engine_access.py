"""deploy/: the engine is not an open door, and nothing ships with a default secret.

Parses deploy/compose.yaml and deploy/k8s/ and checks: only the gateway (and Prometheus, for
``/metrics``) may reach the engine's port in Kubernetes (a NetworkPolicy); the engine's key
comes from a Secret (k8s) or the operator's .env (compose) and is the same value on both sides;
compose publishes no engine port, ships no Grafana password and no open ``/v1``.
"""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.paths import DEPLOY
from tests.deploy.test_manifests import (
    K8S,
    compose,
    compose_engines,
    k8s_objects,
    load_all,
    workload,
)

ENGINE_PORT = 8000
REQUIRED = re.compile(r"^\$\{(?P<var>[A-Z0-9_]+):\?[^}]+\}$")


def _required_var(value: object) -> str:
    """The variable name of a ``${VAR:?message}`` value (compose refuses to start without it)."""
    match = REQUIRED.match(str(value))
    assert match, f"{value!r} is not a required ${{VAR:?message}} value"
    return match.group("var")


# --- compose -----------------------------------------------------------------------------------


def test_compose_engine_port_is_not_published() -> None:
    services = compose()["services"]
    for engine in [*compose_engines(services).values(), services["postgres"]]:
        assert "ports" not in engine
        assert "network_mode" not in engine  # host networking would publish every port


def test_compose_engine_key_comes_from_the_operator_on_both_sides() -> None:
    services = compose()["services"]
    gateway_var = _required_var(services["gateway"]["environment"]["LORA_GATEWAY_ENGINE_API_KEY"])
    assert gateway_var == "LORA_GATEWAY_ENGINE_API_KEY"
    for engine in compose_engines(services).values():
        assert _required_var(engine["environment"]["VLLM_API_KEY"]) == gateway_var


def test_compose_v1_is_not_open_by_default() -> None:
    env = compose()["services"]["gateway"]["environment"]
    assert _required_var(env["LORA_GATEWAY_API_KEYS"]) == "LORA_GATEWAY_API_KEYS"


def test_compose_ships_no_grafana_password() -> None:
    env = compose()["services"]["grafana"]["environment"]
    assert _required_var(env["GF_SECURITY_ADMIN_PASSWORD"]) == "GRAFANA_ADMIN_PASSWORD"
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"


def test_compose_has_no_default_for_any_secret() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    defaults = re.findall(r"\$\{([A-Z0-9_]*(?:KEY|TOKEN|PASSWORD|SECRET)[A-Z0-9_]*):?-", text)
    assert defaults == [], f"secrets with a default value: {defaults}"


def test_compose_env_example_names_every_required_variable() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = (DEPLOY / "env.example").read_text()
    listed = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert required <= listed, f"missing from deploy/env.example: {sorted(required - listed)}"
    # The example holds no usable value: every secret line is left for the operator to fill.
    for line in example.splitlines():
        if re.match(r"^[A-Z0-9_]*(KEY|TOKEN|PASSWORD)[A-Z0-9_]*=", line):
            assert line.endswith("="), f"example carries a value: {line.split('=')[0]}"


# --- kubernetes --------------------------------------------------------------------------------


def _pod(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = workload(objects, name)["spec"]["template"]
    return spec


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def test_k8s_network_policy_lets_only_the_gateway_and_prometheus_reach_the_engine() -> None:
    objects = k8s_objects()
    engine_labels = _pod(objects, "vllm-engine")["metadata"]["labels"]
    gateway_labels = _pod(objects, "lora-gateway")["metadata"]["labels"]
    policies = [
        doc
        for (kind, _), doc in objects.items()
        if kind == "NetworkPolicy" and _selects(doc["spec"]["podSelector"], engine_labels)
    ]
    assert len(policies) == 1, "one NetworkPolicy must select the engine pods"
    spec = policies[0]["spec"]
    assert "Ingress" in spec["policyTypes"]
    rules = spec["ingress"]
    assert rules, "an empty ingress list is fine (deny all) but then the gateway cannot reach it"
    peers: list[dict[str, Any]] = []
    for rule in rules:
        assert rule.get("from"), "a rule without 'from' admits every pod and address"
        assert rule.get("ports"), "a rule without 'ports' admits every port"
        assert {(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]} <= {
            ("TCP", ENGINE_PORT),
            ("TCP", "http"),
        }
        peers.extend(rule["from"])
    gateway_peers = [
        peer
        for peer in peers
        if "namespaceSelector" not in peer and _selects(peer["podSelector"], gateway_labels)
    ]
    assert gateway_peers, "the gateway pods must be admitted"
    for peer in peers:
        assert "ipBlock" not in peer, "no address ranges: pods are named by label"
        assert peer.get("podSelector", {}).get("matchLabels"), f"peer selects every pod: {peer}"
        if "namespaceSelector" in peer:  # Prometheus, from its own namespace
            assert peer["namespaceSelector"].get("matchLabels")
            assert peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "prometheus"


def test_k8s_engine_service_is_cluster_internal() -> None:
    service = k8s_objects()[("Service", "vllm-engine")]
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def _secret_env(container: dict[str, Any], name: str) -> tuple[str, str]:
    [item] = [item for item in container.get("env", []) if item["name"] == name]
    ref = item["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional"), f"{name} must not be optional"
    return ref["name"], ref["key"]


def test_k8s_engine_key_comes_from_one_secret_on_both_sides() -> None:
    objects = k8s_objects()
    engine = _pod(objects, "vllm-engine")["spec"]["containers"][0]
    gateway = _pod(objects, "lora-gateway")["spec"]["containers"][0]
    engine_ref = _secret_env(engine, "VLLM_API_KEY")
    assert _secret_env(gateway, "LORA_GATEWAY_ENGINE_API_KEY") == engine_ref
    assert "--api-key" not in " ".join(engine.get("args", []))  # argv shows in `ps` / the API
    examples = {doc["metadata"]["name"]: doc for doc in load_all(K8S / "secret.example.yaml")}
    secret_name, key = engine_ref
    assert key in examples[secret_name]["stringData"]
    # The engine pod sees its key only, never the admin token or client keys.
    engine_secrets = {
        item["valueFrom"]["secretKeyRef"]["name"]
        for item in engine.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert engine_secrets == {secret_name}
    assert secret_name != _secret_env(gateway, "LORA_GATEWAY_ADMIN_TOKEN")[0]
