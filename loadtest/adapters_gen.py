"""The one adapter writer: seeded random PEFT LoRA directories for a Llama-shaped base model.

Shapes come from the base's ``config.json`` (hidden size, intermediate size, heads, key/value
heads, head size, layers), so vLLM loads the result and the gateway's registry validates it
like a trained adapter. Written with numpy + safetensors (no torch): a thousand adapters take
seconds. Same arguments, same bytes. The weights are seeded noise, both A and B non-zero (a
trained adapter's ``lora_B`` is not zero either), so each adapter's answers differ from the
base's: by default at the base's own scale (A ~ 1/sqrt(in), B ~ 1/sqrt(r)), or N(0, ``scale``).

Used by the benchmark (:mod:`loadtest.adapter_suites`: :func:`write_adapter_set`), by the unit
tests' builders (tests/adapters/builders.py, on tiny synthetic bases) and by the integration
tests (:func:`write_random_lora` on the real tiny model). Real trained adapters come from the
trainer. File names are the contract's (:mod:`adapters.contract`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST

MAX_GENERATED = 10_000
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def llama_module_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) features of each LoRA-targetable linear of one Llama layer, keyed by its path
    inside the layer (``self_attn.q_proj``, ``mlp.down_proj``, ...)."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    shapes = {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv_heads * head_dim, hidden),
        "self_attn.v_proj": (kv_heads * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
    }
    if "intermediate_size" in config:
        intermediate = int(config["intermediate_size"])
        shapes |= {
            "mlp.gate_proj": (intermediate, hidden),
            "mlp.up_proj": (intermediate, hidden),
            "mlp.down_proj": (hidden, intermediate),
        }
    return shapes


def write_lora(
    out: Path,
    base_config: Mapping[str, Any],
    *,
    base_model: str | None,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 0,
    scale: float | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    manifest: Mapping[str, Any] | None = None,
) -> Path:
    """One PEFT LoRA directory at ``out`` for a base whose ``config.json`` is ``base_config``.

    ``base_model`` becomes PEFT's ``base_model_name_or_path``; ``alpha`` defaults to 2 x rank;
    ``config_overrides`` are merged into adapter_config.json (to write a bad one on purpose);
    ``manifest`` is written as manifest.json when given.
    """
    shapes = {
        path.rsplit(".", 1)[-1]: (path, shape)
        for path, shape in llama_module_shapes(base_config).items()
    }
    unknown = sorted(set(targets) - set(shapes))
    if unknown:
        raise ValueError(f"unsupported target modules {unknown}; use {sorted(shapes)}")
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(int(base_config["num_hidden_layers"])):
        for target in targets:
            path, (out_features, in_features) = shapes[target]
            prefix = f"base_model.model.model.layers.{layer}.{path}"
            a_std = scale if scale is not None else 1 / np.sqrt(in_features)
            b_std = scale if scale is not None else 1 / np.sqrt(rank)
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0.0, a_std, (rank, in_features)).astype(
                np.float32
            )
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(
                0.0, b_std, (out_features, rank)
            ).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha if alpha is not None else 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(targets),
        "base_model_name_or_path": base_model,
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    peft_config.update(config_overrides or {})
    (out / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2))
    if manifest is not None:
        (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def write_random_lora(
    out: Path,
    base_dir: Path,
    *,
    base_name: str | None = None,
    rank: int = 8,
    alpha: float | None = None,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 0,
    scale: float | None = None,
) -> Path:
    """:func:`write_lora` for the base model directory ``base_dir`` (its config.json);
    ``base_name`` (default: the directory's path) is what the adapter says it was trained on."""
    config = json.loads((base_dir / "config.json").read_text())
    return write_lora(
        out,
        config,
        base_model=base_name or str(base_dir),
        rank=rank,
        alpha=alpha,
        targets=targets,
        seed=seed,
        scale=scale,
    )


def write_adapter_set(
    root: Path, base_dir: Path, *, base_name: str, prefix: str, count: int, rank: int = 8
) -> list[tuple[str, Path]]:
    """``count`` adapters named ``PREFIX-0..`` under ``root``; existing ones are kept."""
    if not 1 <= count <= MAX_GENERATED:
        raise ValueError(f"count must be 1..{MAX_GENERATED}, got {count}")
    made = []
    for index in range(count):
        name = f"{prefix}-{index}"
        directory = root / name
        if not (directory / ADAPTER_WEIGHTS).is_file():
            write_random_lora(directory, base_dir, base_name=base_name, rank=rank, seed=index)
        made.append((name, directory))
    return made
