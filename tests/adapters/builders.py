"""Test builders: tiny Llama-shaped base model and adapter directories in the real formats.

The base model's safetensors are written with struct + json (8 bytes of header length, a JSON
header, then seeded bytes: the shapes and names are what the validator reads), so unit tests
need neither torch nor a model hub. Adapters for it are written by the project's one adapter
writer, :mod:`loadtest.adapters_gen`, which the benchmark and the integration tests use too.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path
from typing import Any

from adapters.store import AdapterStore
from adapters.validation import AdapterValidator, ValidationLimits
from loadtest.adapters_gen import llama_module_shapes, write_lora

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


def tiny_llama_config(
    *, hidden: int = 64, intermediate: int = 128, layers: int = 2, vocab: int = 96
) -> dict[str, Any]:
    """The config.json of a tiny Llama-shaped base (one attention head)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
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
    config = tiny_llama_config(hidden=hidden, intermediate=intermediate, layers=layers, vocab=vocab)
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    (directory / "config.json").write_text(json.dumps(config))
    tensors: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for layer in range(layers):
        for module, shape in llama_module_shapes(config).items():
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
    """A PEFT LoRA directory for a base made by :func:`write_base_model` with the same sizes,
    written by the project's one adapter writer (:func:`loadtest.adapters_gen.write_lora`)."""
    return write_lora(
        directory,
        tiny_llama_config(hidden=hidden, intermediate=intermediate, layers=layers),
        base_model=base_model,
        rank=r,
        targets=targets,
        seed=seed,
        config_overrides=config_overrides,
        manifest=manifest,
    )


def lenient_validator(base: str, roots: Path, base_dir: Path) -> AdapterValidator:
    """A validator for ``base`` (its files at ``base_dir``) with roomy limits: rank up to 16,
    1 GiB, adapters read only below ``roots``."""
    return AdapterValidator(base, ValidationLimits(16, 1 << 30, (roots,)), base_dir=base_dir)


def lenient_store(directory: Path, base: str, roots: Path, base_dir: Path) -> AdapterStore:
    """An adapter store in ``directory`` validating with :func:`lenient_validator`."""
    return AdapterStore(directory, lenient_validator(base, roots, base_dir))
