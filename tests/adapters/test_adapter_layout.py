"""adapters.layout: reading adapter and base directories without torch."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from adapters.contract import ADAPTER_WEIGHTS
from adapters.layout import (
    LayoutError,
    read_adapter,
    read_base_model,
    read_safetensors_header,
    with_sha256,
)
from tests.adapters.builders import write_adapter, write_base_model, write_safetensors


def test_safetensors_header_matches_the_safetensors_library(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    numpy = pytest.importorskip("numpy")
    path = tmp_path / "x.safetensors"
    safetensors_numpy.save_file(
        {
            "a.weight": numpy.zeros((3, 5), dtype=numpy.float32),
            "b": numpy.ones((7,), dtype=numpy.float16),
        },
        str(path),
    )
    tensors = read_safetensors_header(path)
    assert {name: (t.dtype, t.shape) for name, t in tensors.items()} == {
        "a.weight": ("F32", (3, 5)),
        "b": ("F16", (7,)),
    }


def test_adapter_layout_reads_config_tensors_and_hash(tmp_path: Path) -> None:
    directory = write_adapter(
        tmp_path / "a1",
        base_model="org/TinyBase",
        r=4,
        targets=("q_proj", "down_proj"),
        manifest={"base_model": "tinybase"},
    )
    layout = with_sha256(read_adapter(directory))
    assert layout.peft_type == "LORA"
    assert (layout.r, layout.lora_alpha, layout.max_rank) == (4, 8.0, 4)
    assert layout.target_modules == ("q_proj", "down_proj")
    assert layout.base_model_name_or_path == "org/TinyBase"
    weights = (directory / ADAPTER_WEIGHTS).read_bytes()
    assert layout.sha256 == hashlib.sha256(weights).hexdigest()
    assert layout.weights_size == len(weights)
    modules = {m.module: (m.a_shape, m.b_shape) for m in layout.lora_modules()}
    assert modules["model.layers.1.self_attn.q_proj"] == ((4, 64), (64, 4))
    assert modules["model.layers.0.mlp.down_proj"] == ((4, 128), (64, 4))
    assert len(modules) == 4
    assert layout.manifest_base() == ("tinybase", None)


def test_rank_pattern_overrides_rank_for_matching_modules(tmp_path: Path) -> None:
    directory = write_adapter(
        tmp_path / "a", base_model=None, r=4, config_overrides={"rank_pattern": {"v_proj": 32}}
    )
    layout = read_adapter(directory)
    assert layout.max_rank == 32
    assert layout.rank_for("model.layers.0.self_attn.v_proj") == 32
    assert layout.rank_for("model.layers.0.self_attn.q_proj") == 4


def test_truncated_weights_are_detected(tmp_path: Path) -> None:
    directory = write_adapter(tmp_path / "a", base_model=None)
    weights = directory / ADAPTER_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(LayoutError) as caught:
        read_adapter(directory)
    assert caught.value.check == "invalid_weights"
    assert "outside the file" in caught.value.message


@pytest.mark.parametrize(
    "payload", [b"\x01\x00", struct.pack("<Q", 1 << 40) + b"{}", struct.pack("<Q", 4) + b"nope"]
)
def test_garbage_weights_are_refused(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(payload)
    with pytest.raises(LayoutError) as caught:
        read_safetensors_header(path)
    assert caught.value.check == "invalid_weights"


def test_base_model_modules_from_single_and_sharded_weights(tmp_path: Path) -> None:
    single = read_base_model(write_base_model(tmp_path / "single", layers=2))
    config_bytes = (tmp_path / "single" / "config.json").read_bytes()
    assert single.config_sha256 == hashlib.sha256(config_bytes).hexdigest()
    assert single.modules["model.layers.1.mlp.down_proj"] == (64, 128)
    assert single.modules["lm_head"] == (96, 64)

    sharded = tmp_path / "sharded"
    write_base_model(sharded, layers=2)
    (sharded / "model.safetensors").unlink()
    write_safetensors(
        sharded / "model-00001-of-00002.safetensors",
        {"model.layers.0.self_attn.q_proj.weight": (64, 64)},
    )
    write_safetensors(
        sharded / "model-00002-of-00002.safetensors",
        {"model.layers.1.self_attn.q_proj.weight": (64, 64)},
    )
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
                    "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    assert set(read_base_model(sharded).modules) == {
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    }
