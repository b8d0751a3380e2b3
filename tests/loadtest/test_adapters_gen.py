"""Generated benchmark adapters pass the registry's own preflight checks for the tiny base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from adapters.validation import AdapterValidator, ValidationLimits
from loadtest.adapters_gen import write_adapter_set, write_random_lora


def test_generated_adapters_validate_against_the_tiny_base(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    made = write_adapter_set(tmp_path, tiny_model_dir, base_name="tiny", prefix="gen", count=3)
    assert [name for name, _ in made] == ["gen-0", "gen-1", "gen-2"]
    validator = AdapterValidator(
        "tiny",
        ValidationLimits(
            max_lora_rank=8, max_adapter_bytes=1 << 30, allowed_roots=(tmp_path.resolve(),)
        ),
        base_dir=tiny_model_dir,
    )
    assert validator.base.layout is not None  # shapes are checked against the real base
    for name, path in made:
        layout = validator.validate(name, path)
        assert layout.max_rank == 8
    first = load_file(str(made[0][1] / ADAPTER_WEIGHTS))
    second = load_file(str(made[1][1] / ADAPTER_WEIGHTS))
    key = next(k for k in first if k.endswith("lora_B.weight"))
    assert first[key].any() and not (first[key] == second[key]).all()


def test_existing_adapters_are_kept_and_bad_targets_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    (path,) = [
        p
        for _, p in write_adapter_set(
            tmp_path, tiny_model_dir, base_name="tiny", prefix="keep", count=1
        )
    ]
    before = (path / ADAPTER_WEIGHTS).stat().st_mtime_ns
    write_adapter_set(tmp_path, tiny_model_dir, base_name="tiny", prefix="keep", count=1)
    assert (path / ADAPTER_WEIGHTS).stat().st_mtime_ns == before
    assert json.loads((path / ADAPTER_CONFIG).read_text())["peft_type"] == "LORA"
    with pytest.raises(ValueError, match="lm_head"):
        write_random_lora(tmp_path / "bad", tiny_model_dir, base_name="tiny", targets=("lm_head",))
    with pytest.raises(ValueError, match="count"):
        write_adapter_set(tmp_path, tiny_model_dir, base_name="tiny", prefix="x", count=0)
