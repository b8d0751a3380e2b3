"""Write real PEFT LoRA adapter directories from code, for tests that load them into vLLM.

``write_lora_adapter`` reads the base model's ``config.json`` for the module shapes and writes
``adapter_config.json`` + ``adapter_model.safetensors`` (float32, PEFT key names) with seeded
random A and B matrices, both non-zero, so an adapter visibly changes the base model's output.
Same arguments, same bytes. Used by the integration fixtures and any test that needs an adapter
that vLLM, PEFT and the registry all accept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def module_shapes(base_config: dict[str, object]) -> dict[str, tuple[int, int]]:
    """``(in_features, out_features)`` of each LoRA-targetable linear of a Llama layer."""

    def get(key: str) -> int:
        value = base_config[key]
        assert isinstance(value, int), f"{key} is not an int in config.json: {value!r}"
        return value

    hidden, intermediate = get("hidden_size"), get("intermediate_size")
    heads = get("num_attention_heads")
    kv_heads = int(base_config.get("num_key_value_heads") or heads)  # type: ignore[call-overload]
    head_dim = int(base_config.get("head_dim") or hidden // heads)  # type: ignore[call-overload]
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, intermediate),
        "up_proj": (hidden, intermediate),
        "down_proj": (intermediate, hidden),
    }


def write_lora_adapter(
    out: Path,
    base_model_dir: Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 0,
    scale: float = 0.1,
) -> Path:
    """Write a PEFT LoRA adapter for the Llama model in ``base_model_dir`` into ``out``.

    A and B are drawn from N(0, scale) with ``seed``; with the defaults the delta is about as
    large as the tiny model's own projections, so greedy output differs from the base.
    """
    config = json.loads((base_model_dir / "config.json").read_text())
    shapes = module_shapes(config)
    unknown = sorted(set(target_modules) - set(shapes))
    if unknown:
        raise ValueError(f"unknown target modules {unknown}; choose from {sorted(shapes)}")
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(int(config["num_hidden_layers"])):
        for module in target_modules:
            block = "self_attn" if module in _ATTENTION else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{module}"
            in_features, out_features = shapes[module]
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0.0, scale, (rank, in_features)).astype(
                np.float32
            )
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(
                0.0, scale, (out_features, rank)
            ).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    adapter_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_dir),
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    return out
