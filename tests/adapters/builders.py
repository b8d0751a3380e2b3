"""Test builders: small base model and adapter directories in the real on-disk formats.

Written with struct + json (the safetensors format is 8 bytes of header length, a JSON header,
then the raw data), so unit tests need neither torch nor a model hub. The tensor bytes are
seeded pseudo-random data: the shapes and names are what the validator reads; real-engine
adapters come from tests/support (PEFT) in the integration tests.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST

LLAMA_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
LLAMA_MLP = ("gate_proj", "up_proj", "down_proj")
_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2}


def write_safetensors(
    path: Path, tensors: dict[str, tuple[int, ...]], *, dtype: str = "F32", seed: int = 0
) -> None:
    """A valid safetensors file holding ``tensors`` (name -> shape) filled with seeded bytes."""
    rng = random.Random(seed)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, shape in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        size = count * _DTYPE_BYTES[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        blobs.append(rng.randbytes(size))
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def llama_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, int]]:
    """(out, in) of each adapted linear module of one Llama layer."""
    return {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, hidden),
        "self_attn.v_proj": (hidden, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }


def write_base_model(
    directory: Path,
    *,
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    vocab: int = 96,
    name_or_path: str | None = None,
) -> Path:
    """A Llama-shaped base model directory: config.json + model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
    }
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    (directory / "config.json").write_text(json.dumps(config))
    tensors: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(layers):
        for module, shape in llama_shapes(hidden, intermediate).items():
            tensors[f"model.layers.{layer}.{module}.weight"] = shape
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = (hidden,)
    tensors["model.norm.weight"] = (hidden,)
    tensors["lm_head.weight"] = (vocab, hidden)
    write_safetensors(directory / "model.safetensors", tensors)
    return directory


def write_adapter(
    directory: Path,
    *,
    base_model: str | None,
    r: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    hidden: int = 64,
    intermediate: int = 128,
    layers: int = 2,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
) -> Path:
    """A PEFT LoRA directory for a base made by :func:`write_base_model` with the same sizes."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": list(targets),
        "base_model_name_or_path": base_model,
        "bias": "none",
        "use_dora": False,
        "lora_dropout": 0.0,
        "modules_to_save": None,
    }
    config.update(config_overrides or {})
    (directory / ADAPTER_CONFIG).write_text(json.dumps(config))
    tensors: dict[str, tuple[int, ...]] = {}
    for layer in range(layers):
        for module, (out, inp) in llama_shapes(hidden, intermediate).items():
            if module.rsplit(".", 1)[-1] not in targets:
                continue
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = (r, inp)
            tensors[f"{prefix}.lora_B.weight"] = (out, r)
    write_safetensors(directory / ADAPTER_WEIGHTS, tensors, seed=seed)
    if manifest is not None:
        (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory
