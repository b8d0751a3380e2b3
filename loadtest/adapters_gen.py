"""Benchmark adapters: small random PEFT LoRA directories for a given base model directory.

Shapes come from the base's ``config.json`` (Llama family: hidden size, heads, key/value heads,
head size, layers), so vLLM loads them and the gateway's registry validates them like trained
ones. Written with numpy + safetensors (no torch): a thousand adapters take seconds. The
weights are seeded noise of the base's own scale (a trained adapter's ``lora_B`` is not zero
either), so each adapter's answers differ from the base's. Used
by :mod:`loadtest.bench` only; real trained adapters come from the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS

MAX_GENERATED = 10_000


def _projection_shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) features of the attention projections of one layer."""
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    return {
        "q_proj": (heads * head_dim, hidden),
        "k_proj": (kv_heads * head_dim, hidden),
        "v_proj": (kv_heads * head_dim, hidden),
        "o_proj": (hidden, heads * head_dim),
    }


def write_random_lora(
    out: Path,
    base_dir: Path,
    *,
    base_name: str,
    rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> Path:
    """One PEFT LoRA directory at ``out`` for the base model in ``base_dir``."""
    config = json.loads((base_dir / "config.json").read_text())
    shapes = _projection_shapes(config)
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unsupported target modules {sorted(unknown)}; use {sorted(shapes)}")
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for target in targets:
            out_features, in_features = shapes[target]
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = (
                rng.standard_normal((rank, in_features)) / np.sqrt(in_features)
            ).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = (
                rng.standard_normal((out_features, rank)) / np.sqrt(rank)
            ).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(targets),
        "base_model_name_or_path": base_name,
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(peft_config, indent=2))
    return out


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
