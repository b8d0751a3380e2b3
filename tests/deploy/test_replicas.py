"""deploy/: several gateway replicas share one PostgreSQL registry in front of N engines.

Parses deploy/compose.yaml and deploy/k8s/ and checks what makes replicas safe to run: every
replica gets the same PostgreSQL URL (psycopg driver, the database the PostgreSQL service really
creates, its password from the operator or a Secret), no replica keeps the registry on a volume of
its own, engines have stable names, and only the gateway reaches the database.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import make_url

from tests.deploy.test_manifests import (
    K8S,
    compose,
    compose_engines,
    k8s_objects,
    load_all,
    settings_from,
    workload,
)

POSTGRES_PORT = 5432


# --- compose -----------------------------------------------------------------------------------


def test_compose_gateway_replicas_share_the_postgres_service() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    replicas = gateway["deploy"]["replicas"]
    assert replicas >= 2
    # One host port per replica: the published range is as wide as the replica count.
    [published] = gateway["ports"]
    match = re.fullmatch(r"(\d+)-(\d+):8000", published)
    assert match is not None, published
    assert int(match.group(2)) - int(match.group(1)) + 1 == replicas

    raw_url = gateway["environment"]["LORA_GATEWAY_DATABASE_URL"]
    assert "${POSTGRES_PASSWORD:?" in raw_url  # no default password
    url = make_url(re.sub(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", "secret", raw_url))
    postgres = services["postgres"]["environment"]
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == ("postgres", POSTGRES_PORT)
    assert (url.username, url.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"])
    assert postgres["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    settings = settings_from({**gateway["environment"], "LORA_GATEWAY_DATABASE_URL": str(url)})
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgres"]


def test_compose_replicas_keep_no_registry_of_their_own() -> None:
    gateway = compose()["services"]["gateway"]
    settings = settings_from(gateway["environment"])
    mounts = {m.split(":")[1]: m.split(":")[0] for m in gateway["volumes"]}
    # A volume at the data dir would be one SQLite registry for every replica: never that.
    assert str(settings.data_dir) not in mounts
    assert set(mounts) == {str(settings.managed_adapters_dir)}


def test_compose_gateway_waits_for_every_engine() -> None:
    services = compose()["services"]
    depends = services["gateway"]["depends_on"]
    assert set(compose_engines(services)) <= set(depends)


# --- kubernetes --------------------------------------------------------------------------------


def test_k8s_engines_are_a_statefulset_behind_a_headless_service() -> None:
    objects = k8s_objects()
    engines = objects[("StatefulSet", "vllm-engine")]
    service = objects[("Service", engines["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= (
        engines["spec"]["template"]["metadata"]["labels"].items()
    )
    assert engines["spec"]["replicas"] >= 2
    assert ("Deployment", "vllm-engine") not in objects


def test_k8s_gateway_replicas_share_the_database_from_a_secret() -> None:
    objects = k8s_objects()
    gateway = objects[("Deployment", "lora-gateway")]
    assert gateway["spec"]["replicas"] >= 2
    assert gateway["spec"]["strategy"]["type"] == "RollingUpdate"
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    [item] = [e for e in container["env"] if e["name"] == "LORA_GATEWAY_DATABASE_URL"]
    ref = item["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional")
    config = objects[("ConfigMap", "lora-gateway-config")]["data"]
    assert "LORA_GATEWAY_DATABASE_URL" not in config  # a password belongs in a Secret

    # The example Secret's URL names the in-cluster PostgreSQL as postgres.yaml defines it.
    examples = {doc["metadata"]["name"]: doc for doc in load_all(K8S / "secret.example.yaml")}
    secret = examples[ref["name"]]["stringData"]
    url = make_url(secret[ref["key"]])
    postgres = objects[("StatefulSet", "postgres")]
    service = objects[("Service", "postgres")]
    env = {e["name"]: e for e in postgres["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
    )
    assert url.username == env["POSTGRES_USER"]["value"]
    assert url.database == env["POSTGRES_DB"]["value"]
    password_ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password_ref["name"] == ref["name"] and password_ref["key"] in secret


def test_k8s_replicas_mount_only_shared_claims() -> None:
    objects = k8s_objects()
    pod = objects[("Deployment", "lora-gateway")]["spec"]["template"]["spec"]
    claims = {name: doc for (kind, name), doc in objects.items() if kind == "PersistentVolumeClaim"}
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            claim = claims[volume["persistentVolumeClaim"]["claimName"]]
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"], volume["name"]


def test_k8s_only_the_gateway_reaches_postgres() -> None:
    objects = k8s_objects()
    postgres_labels = workload(objects, "postgres")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = workload(objects, "lora-gateway")["spec"]["template"]["metadata"]["labels"]
    policies: list[dict[str, Any]] = [
        doc
        for (kind, _), doc in objects.items()
        if kind == "NetworkPolicy"
        and doc["spec"]["podSelector"]["matchLabels"].items() <= postgres_labels.items()
    ]
    assert len(policies) == 1
    [rule] = policies[0]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [POSTGRES_PORT]
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"}
    assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
