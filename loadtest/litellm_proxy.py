"""LiteLLM's proxy as the benchmark's point of comparison: its own venv, a config, a process.

LiteLLM is installed only for the benchmark, pinned, into a venv of its own (default
``.bench/litellm-venv``), made on demand with uv when available (pip otherwise). The version
is the newest whose ``[proxy]`` extra resolves on PyPI as of November 2026; 1.107.x (a
compromised release, pulled) is avoided. The generated config routes every benchmark model
name to ``openai/<name>`` at the upstream's ``/v1`` and sets a master key (the proxy refuses to
start without one); retries off, local cost map (no network at start). Used by
:mod:`loadtest.bench`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from loadtest.procs import Service, free_port, spawn

LITELLM_VERSION = "1.106.2"
REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
MARKER = ".lora-gateway-litellm"
INSTALL_TIMEOUT_S = 900


def _uv() -> str | None:
    local = Path(__file__).resolve().parents[1] / ".tools" / "bin" / "uv"
    return str(local) if local.exists() else shutil.which("uv")


def ensure_venv(venv: Path) -> Path:
    """The venv's ``litellm`` executable, installing the pinned version if missing."""
    executable = venv / "bin" / "litellm"
    marker = venv / MARKER
    if executable.exists() and marker.exists() and marker.read_text().strip() == REQUIREMENT:
        return executable
    uv = _uv()
    if uv is not None:
        commands = [
            [uv, "venv", "-q", "--allow-existing", "--python", sys.executable, str(venv)],
            [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), REQUIREMENT],
        ]
    else:
        commands = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", REQUIREMENT],
        ]
    for command in commands:
        result = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT_S
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"installing {REQUIREMENT} failed ({' '.join(command[:3])}...):\n"
                f"{(result.stderr or result.stdout)[-2000:]}"
            )
    marker.write_text(REQUIREMENT + "\n")
    return executable


def write_config(path: Path, upstream_url: str, models: Sequence[str], master_key: str) -> Path:
    """A proxy config (JSON is valid YAML) routing each name to the same name upstream."""
    config = {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": upstream_url + "/v1",
                    "api_key": "none",
                },
            }
            for name in models
        ],
        "litellm_settings": {"num_retries": 0, "request_timeout": 600, "telemetry": False},
        "general_settings": {"master_key": master_key},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def start_litellm(
    venv: Path,
    upstream_url: str,
    models: Sequence[str],
    master_key: str,
    log_dir: Path,
    *,
    cpus: frozenset[int] | None = None,
    timeout_s: float = 180.0,
) -> Service:
    """One proxy worker in front of ``upstream_url``; returns once ``/v1/models`` answers."""
    executable = ensure_venv(venv)
    config = write_config(log_dir / "litellm-config.yaml", upstream_url, models, master_key)
    port = free_port()
    command = [
        str(executable),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "PATH": f"{venv / 'bin'}:{os.environ.get('PATH', '')}",
    }
    service = spawn(
        "litellm", command, url=f"http://127.0.0.1:{port}", log_dir=log_dir, cpus=cpus, env=env
    )
    service.wait_ready(
        "/v1/models", timeout_s=timeout_s, headers={"Authorization": f"Bearer {master_key}"}
    )
    return service
