"""deploy/compose.yaml, deploy/k8s/ and deploy/Dockerfile: parse, and agree with the code.

No container engine or cluster here, so these check what can be checked offline: every file
parses; every LORA_GATEWAY_* variable is a real GatewaySettings field with a valid value; the
engine's LoRA flags equal the gateway's settings; probes hit the gateway's real health routes;
selectors, Secrets, volumes and scrape targets line up; the Dockerfile copies what exists and
installs the way the Makefile does.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import GatewaySettings
from tests.deploy.paths import DEPLOY, ROOT

K8S = DEPLOY / "k8s"
ENV_PREFIX = "LORA_GATEWAY_"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_all(path):
            if doc["kind"] == "Kustomization":
                continue
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def compose_engines(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The engine services (engine-0, engine-1, ...), in order."""
    names = sorted(
        (name for name in services if re.fullmatch(r"engine-\d+", name)),
        key=lambda name: int(name.split("-")[1]),
    )
    return {name: services[name] for name in names}


#: The kinds whose pod template runs a workload.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def workload(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    """The Deployment or StatefulSet called ``name``."""
    [found] = [objects[(kind, name)] for kind in WORKLOAD_KINDS if (kind, name) in objects]
    return found


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` / ``--name value`` / ``--switch`` into a dict."""
    parsed: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq and index + 1 < len(args) and not args[index + 1].startswith("--"):
                value = args[index + 1]
                index += 1
            parsed[name] = value if (eq or value) else "true"
        index += 1
    return parsed


def settings_from(env: dict[str, str]) -> GatewaySettings:
    """Build the settings exactly as the gateway would from this environment."""
    unknown = {
        key
        for key in env
        if key.startswith(ENV_PREFIX)
        and key[len(ENV_PREFIX) :].lower() not in GatewaySettings.model_fields
    }
    assert not unknown, f"not GatewaySettings fields: {sorted(unknown)}"
    values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and not value.startswith("${")
    }
    return GatewaySettings(**values)  # type: ignore[arg-type]


def assert_engine_matches_gateway(engine_args: list[str], gateway: GatewaySettings) -> None:
    engine = flags(engine_args)
    assert "enable-lora" in engine
    assert int(engine["max-loras"]) == gateway.max_loras
    assert int(engine["max-cpu-loras"]) == gateway.cpu_lora_capacity
    assert int(engine["max-lora-rank"]) == gateway.max_lora_rank
    assert int(engine["max-model-len"]) == gateway.max_model_len
    assert engine["served-model-name"] == gateway.served_model_name
    assert engine["model"].endswith("/" + gateway.served_model_name)


# --- compose -----------------------------------------------------------------------------------


def test_compose_services_and_volumes() -> None:
    spec = compose()
    engines = set(compose_engines(spec["services"]))
    assert engines == {"engine-0", "engine-1"}
    assert set(spec["services"]) == {"models", "postgres", "gateway", "prometheus", "grafana"} | (
        engines
    )
    declared = set(spec["volumes"])
    for name, service in spec["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} mounts undeclared volume {source}"
        for build in [service.get("build")] if service.get("build") else []:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_gateway_settings_match_the_engine() -> None:
    services = compose()["services"]
    env = services["gateway"]["environment"]
    gateway = settings_from(env)
    engines = compose_engines(services)
    assert gateway.engine_urls == [f"http://{name}:8000" for name in engines]
    assert gateway.host == "0.0.0.0" and gateway.port == 8000
    for engine in engines.values():
        assert_engine_matches_gateway(engine["command"], gateway)
        assert engine["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert "VLLM_PLUGINS" not in engine["environment"]  # would drop the LoRA fix
    # The admin token must come from the operator, never a default in the file.
    assert env["LORA_GATEWAY_ADMIN_TOKEN"].startswith("${LORA_GATEWAY_ADMIN_TOKEN:?")


def test_compose_shares_adapters_at_one_path() -> None:
    services = compose()["services"]
    gateway = settings_from(services["gateway"]["environment"])
    adapters_dir = str(gateway.managed_adapters_dir)
    gateway_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["gateway"]["volumes"]}
    assert gateway_mounts[adapters_dir] == "adapters"
    assert str(gateway.adapter_store_dir).startswith(adapters_dir + "/")  # shared with engines
    for engine in compose_engines(services).values():
        engine_mounts = {m.split(":")[1]: m.split(":")[0] for m in engine["volumes"]}
        assert engine_mounts[adapters_dir] == "adapters"


def test_compose_stop_grace_exceeds_the_drain_bound() -> None:
    gateway = compose()["services"]["gateway"]
    settings = settings_from(gateway["environment"])
    grace = int(re.fullmatch(r"(\d+)s", gateway["stop_grace_period"]).group(1))  # type: ignore[union-attr]
    assert grace > settings.drain_timeout_s


def test_compose_prometheus_scrapes_the_compose_services() -> None:
    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"lora-gateway", "vllm"}
    # Every gateway replica: Docker's DNS has one A record per replica of the service.
    [gateway_sd] = jobs["lora-gateway"]["dns_sd_configs"]
    assert (gateway_sd["names"], gateway_sd["type"], gateway_sd["port"]) == (["gateway"], "A", 8000)
    engine_targets = [t for static in jobs["vllm"]["static_configs"] for t in static["targets"]]
    engines = compose_engines(services)
    assert engine_targets == [f"{name}:8000" for name in engines]
    for engine in engines.values():
        assert "--port=8000" in engine["command"]


def test_compose_gpu_override_keeps_the_engine_flags() -> None:
    override = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    assert set(override["services"]) == set(compose_engines(compose()["services"]))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    gpu_vllm = next(
        d for d in pyproject["project"]["optional-dependencies"]["gpu"] if d.startswith("vllm==")
    )
    devices: list[str] = []
    for engine in override["services"].values():
        assert "command" not in engine and "entrypoint" not in engine  # same flags as the CPU one
        assert engine["image"].startswith("vllm/vllm-openai:v")
        assert engine["image"].endswith(":v" + gpu_vllm.removeprefix("vllm=="))
        for device in engine["deploy"]["resources"]["reservations"]["devices"]:
            devices.extend(device["device_ids"])
    assert len(devices) == len(set(devices)) == len(override["services"])  # a GPU each


# --- kubernetes --------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present - {"secret.example.yaml"}
    for (kind, name), doc in k8s_objects().items():
        assert doc["apiVersion"] and doc["metadata"]["name"] == name, kind


def test_k8s_gateway_probes_and_grace() -> None:
    objects = k8s_objects()
    pod = workload(objects, "lora-gateway")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port_names = {port["name"] for port in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    config = objects[("ConfigMap", "lora-gateway-config")]["data"]
    assert pod["terminationGracePeriodSeconds"] > settings_from(config).drain_timeout_s


def test_k8s_gateway_settings_match_the_engine() -> None:
    objects = k8s_objects()
    gateway = settings_from(objects[("ConfigMap", "lora-gateway-config")]["data"])
    engines = workload(objects, "vllm-engine")
    engine = engines["spec"]["template"]["spec"]["containers"][0]
    assert_engine_matches_gateway(engine["args"], gateway)
    service = objects[("Service", "vllm-engine")]
    port = service["spec"]["ports"][0]["port"]
    # One URL per engine pod, by its stable name under the headless Service.
    assert gateway.engine_urls == [
        f"http://vllm-engine-{index}.vllm-engine:{port}"
        for index in range(engines["spec"]["replicas"])
    ]
    env = {item["name"]: item.get("value") for item in engine["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_k8s_secret_reference_matches_the_example() -> None:
    objects = k8s_objects()
    container = workload(objects, "lora-gateway")["spec"]["template"]["spec"]["containers"][0]
    examples = {doc["metadata"]["name"]: doc for doc in load_all(K8S / "secret.example.yaml")}
    for item in container["env"]:
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref["name"] in examples
        assert ref["key"] in examples[ref["name"]]["stringData"]
    settings_from({item["name"]: "x" for item in container["env"]})  # real settings fields


@pytest.mark.parametrize("name", ["lora-gateway", "vllm-engine"])
def test_k8s_services_select_their_pods_and_are_scraped(name: str) -> None:
    objects = k8s_objects()
    deployment = workload(objects, name)
    service = objects[("Service", name)]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert service["spec"]["ports"][0]["targetPort"] in container_ports
    monitor = objects[("ServiceMonitor", name)]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_k8s_scrape_jobs_match_the_alert_rules() -> None:
    objects = k8s_objects()
    jobs = {
        relabel["replacement"]
        for (kind, _), doc in objects.items()
        if kind == "ServiceMonitor"
        for endpoint in doc["spec"]["endpoints"]
        for relabel in endpoint.get("relabelings", [])
        if relabel.get("targetLabel") == "job"
    }
    assert jobs == {"lora-gateway", "vllm"}


def test_k8s_prometheusrule_equals_alerts_yml() -> None:
    rule = k8s_objects()[("PrometheusRule", "lora-gateway")]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_k8s_volumes_exist() -> None:
    objects = k8s_objects()
    claims = {name for kind, name in objects if kind == "PersistentVolumeClaim"}
    for kind, name in objects:
        if kind not in WORKLOAD_KINDS:
            continue
        spec = objects[(kind, name)]["spec"]
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in templates:  # a StatefulSet's claim per pod
                    continue
                volume = volumes[mount["name"]]
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_copies_what_exists() -> None:
    for line in dockerfile().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_dockerfile_installs_like_the_makefile() -> None:
    text = dockerfile()
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION \?= (\S+)$", makefile, re.M)
    assert uv_version is not None
    assert f"ARG UV_VERSION={uv_version.group(1)}" in text
    assert "requirements/cpu.lock" in text and "uv pip sync" in text
    assert "--no-deps ." in text
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.M))
    assert {"gateway", "engine-cpu"} <= targets
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert 'ENTRYPOINT ["lora-gateway"]' in text
    assert "lora-gateway" in pyproject["project"]["scripts"]
    python = re.search(r"^ARG PYTHON_VERSION=(\S+)$", text, re.M)
    assert python is not None and python.group(1) == "3.11"


def test_compose_and_k8s_use_the_dockerfile_targets() -> None:
    services = compose()["services"]
    assert services["gateway"]["build"]["target"] == "gateway"
    assert services["models"]["build"]["target"] == "engine-cpu"
    for engine in compose_engines(services).values():
        assert engine["image"] == services["models"]["image"]
    job = k8s_objects()[("Job", "prepare-base-model")]["spec"]["template"]["spec"]
    assert job["containers"][0]["image"] == services["models"]["image"]
