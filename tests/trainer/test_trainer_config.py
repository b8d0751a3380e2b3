"""TrainConfig: resolved defaults, and refusals that name the bad field and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.contract import MANIFEST_ADAPTER_NAME
from trainer.config import (
    ConfigError,
    Method,
    Optimizer,
    Scheduler,
    TrainConfig,
    check_target_modules,
)


def config(**overrides: object) -> TrainConfig:
    fields: dict[str, object] = {"base_model": "m", "data": "d.jsonl", "output": "out"}
    fields.update(overrides)
    return TrainConfig(**fields)  # type: ignore[arg-type]


def test_defaults_resolve_alpha_optimizer_and_targets() -> None:
    lora = config(rank=8)
    assert lora.alpha == 16
    assert lora.optimizer is Optimizer.ADAMW_TORCH
    assert lora.peft_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert isinstance(lora.base_model, Path)

    qlora = config(method="qlora", alpha=7, target_modules="all-linear")
    assert qlora.method is Method.QLORA
    assert qlora.alpha == 7
    assert qlora.optimizer is Optimizer.PAGED_ADAMW_8BIT
    assert qlora.peft_target_modules == "all-linear"

    explicit = config(target_modules="q_proj, v_proj", optimizer="adamw_8bit")
    assert explicit.peft_target_modules == ["q_proj", "v_proj"]
    assert explicit.optimizer is Optimizer.ADAMW_8BIT


def test_resolved_is_json_ready() -> None:
    resolved = config(method=Method.DORA, scheduler=Scheduler.LINEAR, name="my-lora").resolved()
    assert resolved["method"] == "dora"
    assert resolved["scheduler"] == "linear"
    assert resolved["optimizer"] == "adamw_torch"
    assert resolved["alpha"] == 32
    assert resolved["base_model"] == "m"
    assert resolved["target_modules"] == "attention"
    assert resolved[MANIFEST_ADAPTER_NAME] == "my-lora"
    assert config().resolved()[MANIFEST_ADAPTER_NAME] == "out"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"method": "sft"}, "method"),
        ({"rank": 7}, "rank"),
        ({"rank": 0}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"dropout": 1.5}, "dropout"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"epochs": 0}, "epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"grad_accum": 2000}, "grad_accum"),
        ({"max_seq_len": 8}, "max_seq_len"),
        ({"eval_fraction": 0.9}, "eval_fraction"),
        ({"scheduler": "exponential"}, "scheduler"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"target_modules": ""}, "target_modules"),
        ({"target_modules": "q_proj,v-proj!"}, "target_modules"),
        ({"target_modules": [f"m{i}" for i in range(40)]}, "target_modules"),
        ({"target_modules": ["q_proj\n"]}, "target_modules"),
        ({"name": "bad name/../x"}, "name"),
        ({"name": "ends-in-newline\n"}, "name"),
    ],
)
def test_bad_values_are_named(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config(**overrides)


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    existing = tmp_path / "file"
    existing.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        config(output=existing)


def test_explicit_targets_are_checked_against_the_model() -> None:
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    check_target_modules(["q_proj", "down_proj"], linear)
    check_target_modules("all-linear", linear)  # presets are PEFT's to resolve
    with pytest.raises(ConfigError, match=r"\['c_attn'\].*gate_proj"):
        check_target_modules(["q_proj", "c_attn"], linear)


def test_sampling_defaults_are_checked_and_saved_in_the_resolved_config() -> None:
    cfg = config(sampling_defaults={"temperature": 0.2, "top_p": 0.9, "stop": "###"})
    assert cfg.sampling_defaults == {"temperature": 0.2, "top_p": 0.9, "stop": ["###"]}
    assert cfg.resolved()["sampling_defaults"] == cfg.sampling_defaults
    assert config().sampling_defaults is None
    assert config(sampling_defaults={}).sampling_defaults is None
    with pytest.raises(ConfigError, match=r"sampling_defaults\.top_p must be a number in \(0, 1\]"):
        config(sampling_defaults={"top_p": 1.5})
    with pytest.raises(ConfigError, match=r"unknown keys \['temp'\]"):
        config(sampling_defaults={"temp": 0.2})


def test_tilde_in_paths_is_the_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/someone")
    cfg = config(base_model="~/m", data="~/d.jsonl", output="~/out")
    assert (cfg.base_model, cfg.data, cfg.output) == (
        Path("/home/someone/m"),
        Path("/home/someone/d.jsonl"),
        Path("/home/someone/out"),
    )
    assert cfg.adapter_name == "out"
