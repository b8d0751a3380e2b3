"""manifest.json: what an adapter directory says about how it was made.

Written by :func:`trainer.train.train` next to the PEFT files (file names and the keys the
gateway reads are the contract, :mod:`adapters.contract`), read back by
:mod:`trainer.evaluate` (to rebuild the same held-out split) and by people. It records the
resolved config, the data (sha256, format, row counts), the base model's identity (path, a
sha256 of its config.json, the recipe marker that ``gateway.engines.basemodels`` leaves), eval loss
before and after, library versions, wall time and tokens/s. No torch import here.

Optional top-level key ``sampling_defaults`` (:data:`adapters.sampling.SAMPLING_DEFAULTS_KEY`):
an object of default sampling parameters for requests to this adapter that omit them, written
only when the user gave some (``lora-trainer train --default-temperature 0.2 --default-top-p
0.9 --default-stop '###' ...``, or ``TrainConfig(sampling_defaults=...)``). Keys, all optional,
bounds checked by :func:`adapters.sampling.validate_sampling_defaults`: ``temperature`` [0, 2],
``top_p`` (0, 1], ``top_k`` -1 or 1..1000, ``min_p`` [0, 1], ``max_tokens`` 1..131072,
``stop`` a list of 1-4 strings, ``frequency_penalty`` and ``presence_penalty`` [-2, 2],
``repetition_penalty`` (0, 2]. The gateway applies them; the client's own values always win.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.contract import (
    MANIFEST,
    MANIFEST_ADAPTER_NAME,
    MANIFEST_BASE_CONFIG_SHA256,
    MANIFEST_BASE_MODEL,
    MANIFEST_BASE_NAME,
)
from adapters.sampling import SAMPLING_DEFAULTS_KEY, validate_sampling_defaults

MANIFEST_VERSION = 1
# The recipe marker gateway.engines.basemodels writes into a prepared model directory.
BASE_MODEL_MARKER = ".lora-gateway-model.json"
LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


@dataclass(frozen=True)
class RunFigures:
    """What one training run measured."""

    device: str
    steps: int
    train_loss: float | None
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_runtime_s: float
    tokens_seen: int
    wall_time_s: float
    trainable_parameters: int
    compute_dtype: str
    quantization: dict[str, Any] | None  # the BitsAndBytesConfig of a QLoRA run

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_runtime_s if self.train_runtime_s > 0 else 0.0


def base_model_identity(path: Path) -> dict[str, Any]:
    """Name, path and a hash of config.json: enough to tell whether a base is the same one."""
    path = Path(path).resolve()
    config_bytes = (path / "config.json").read_bytes()
    config = json.loads(config_bytes)
    identity: dict[str, Any] = {
        MANIFEST_BASE_NAME: path.name,
        "path": str(path),
        MANIFEST_BASE_CONFIG_SHA256: hashlib.sha256(config_bytes).hexdigest(),
        "architectures": config.get("architectures"),
        "model_type": config.get("model_type"),
    }
    marker = path / BASE_MODEL_MARKER
    if marker.is_file():
        identity["recipe"] = json.loads(marker.read_text())
    return identity


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(
    *,
    config: dict[str, Any],
    data: dict[str, Any],
    base_model: Path,
    figures: RunFigures,
) -> dict[str, Any]:
    dpo = config["method"] == "dpo"
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        MANIFEST_ADAPTER_NAME: config[MANIFEST_ADAPTER_NAME],
        "method": config["method"],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
        "data": data,
        MANIFEST_BASE_MODEL: base_model_identity(base_model),
        "eval": {
            # SFT: mean NLL of held-out completion tokens; DPO: the DPO loss (ln 2 at start).
            "metric": "dpo_loss" if dpo else "completion_nll",
            "loss_before": figures.eval_loss_before,
            "loss_after": figures.eval_loss_after,
            "perplexity_before": None if dpo else _perplexity(figures.eval_loss_before),
            "perplexity_after": None if dpo else _perplexity(figures.eval_loss_after),
        },
        "train": {
            "device": figures.device,
            "compute_dtype": figures.compute_dtype,
            "quantization": figures.quantization,
            "steps": figures.steps,
            "train_loss": figures.train_loss,
            "trainable_parameters": figures.trainable_parameters,
            "train_runtime_s": round(figures.train_runtime_s, 3),
            "tokens_seen": figures.tokens_seen,
            "tokens_per_s": round(figures.tokens_per_s, 1),
            "wall_time_s": round(figures.wall_time_s, 3),
        },
        "versions": library_versions(),
    }
    return with_sampling_defaults(manifest, config.get(SAMPLING_DEFAULTS_KEY))


def with_sampling_defaults(
    manifest: dict[str, Any], defaults: dict[str, Any] | None
) -> dict[str, Any]:
    """``manifest`` with its ``sampling_defaults`` key, checked; no key when there are none."""
    checked = validate_sampling_defaults(defaults) if defaults else {}
    if checked:
        manifest[SAMPLING_DEFAULTS_KEY] = checked
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of an adapter directory, or None when it has none (a foreign adapter)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if isinstance(manifest, dict) else None


def _perplexity(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else None  # JSON has no infinity
