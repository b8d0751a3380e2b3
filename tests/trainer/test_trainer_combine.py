"""``lora-trainer combine``: PEFT's add_weighted_adapter on real adapters of the tiny base.

The parents are real PEFT adapters written from code (``loadtest.adapters_gen``: seeded A and
B, rank 8, alpha 16, so each parent's scale is 2). ``cat`` and full-rank ``svd`` must give
exactly the weighted sum of the parents' deltas, checked tensor by tensor with numpy; the other
methods keep the rank; every refusal happens before a model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from loadtest.adapters_gen import write_random_lora
from trainer.cli import app
from trainer.combine import CombineError, combine, plan_combine

runner = CliRunner()
TARGETS = ("q_proj", "v_proj")


@pytest.fixture(scope="module")
def parents(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("parents")
    return {
        "p1": write_random_lora(root / "p1", tiny_model_dir, seed=1, targets=TARGETS),
        "p2": write_random_lora(root / "p2", tiny_model_dir, seed=2, targets=TARGETS),
        "p3": write_random_lora(root / "p3", tiny_model_dir, seed=3, targets=TARGETS),
        "r16": write_random_lora(
            root / "r16", tiny_model_dir, rank=16, alpha=32, seed=4, targets=TARGETS
        ),
        "qk": write_random_lora(root / "qk", tiny_model_dir, seed=5, targets=("q_proj", "k_proj")),
    }


def deltas(adapter: Path) -> dict[str, np.ndarray]:
    """``scale * B @ A`` per adapted module, from the files alone."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            out[module] = scale * tensors[f"{module}.lora_B.weight"] @ a
    return out


def weighted_sum(adapters: list[Path], weights: list[float]) -> dict[str, np.ndarray]:
    parts = [deltas(adapter) for adapter in adapters]
    return {
        module: sum(w * part[module] for w, part in zip(weights, parts, strict=True))
        for module in parts[0]
    }  # type: ignore[misc]


def assert_same_deltas(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for module, expected in want.items():
        np.testing.assert_allclose(got[module], expected, rtol=1e-4, atol=1e-5, err_msg=module)


def test_cat_is_exactly_the_weighted_sum(parents: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mix"
    argv = ["combine", str(parents["p1"]), str(parents["p2"]), "--weights", "0.7,0.3"]
    result = runner.invoke(app, [*argv, "--method", "cat", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "rank 16" in result.output

    assert sorted(path.name for path in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (16, 16, "LORA")
    assert sorted(config["target_modules"]) == sorted(TARGETS)
    assert_same_deltas(deltas(out), weighted_sum([parents["p1"], parents["p2"]], [0.7, 0.3]))

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["adapter_name"] == "mix"
    assert manifest["method"] == "combine"
    combined = manifest["combine"]
    assert (combined["method"], combined["weights"], combined["rank"]) == ("cat", [0.7, 0.3], 16)
    assert [parent["path"] for parent in combined["parents"]] == [
        str(parents["p1"].resolve()),
        str(parents["p2"].resolve()),
    ]
    assert [parent["rank"] for parent in combined["parents"]] == [8, 8]
    assert all(len(parent["weights_sha256"]) == 64 for parent in combined["parents"])
    assert manifest["base_model"]["config_sha256"]
    assert manifest["config"]["target_modules_resolved"] == sorted(TARGETS)


def test_svd_at_full_rank_is_exact_and_mixed_ranks_work(
    parents: dict[str, Path], tmp_path: Path
) -> None:
    adapters = [parents["p1"], parents["r16"]]
    out = combine(adapters, [1.0, -0.5], "svd", output=tmp_path / "svd", svd_rank=32)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 32
    assert_same_deltas(deltas(out), weighted_sum(adapters, [1.0, -0.5]))


def test_linear_ties_and_dare_keep_the_rank_and_dare_repeats_with_its_seed(
    parents: dict[str, Path], tmp_path: Path
) -> None:
    adapters = [parents["p1"], parents["p2"], parents["p3"]]
    weights = [0.5, 0.3, 0.2]
    outputs = {
        "linear": combine(adapters, weights, "linear", output=tmp_path / "linear"),
        "ties": combine(adapters, weights, "ties", output=tmp_path / "ties", density=0.5),
        "dare1": combine(adapters, weights, "dare_linear", output=tmp_path / "d1", seed=7),
        "dare2": combine(adapters, weights, "dare_linear", output=tmp_path / "d2", seed=7),
        "dare3": combine(adapters, weights, "dare_linear", output=tmp_path / "d3", seed=8),
    }
    for out in outputs.values():
        assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    weights_of = {
        key: (out / "adapter_model.safetensors").read_bytes() for key, out in outputs.items()
    }
    assert weights_of["dare1"] == weights_of["dare2"]
    assert weights_of["dare1"] != weights_of["dare3"]
    assert len(set(weights_of.values())) == 4
    manifest = json.loads((outputs["ties"] / "manifest.json").read_text())
    assert (manifest["combine"]["method"], manifest["combine"]["density"]) == ("ties", 0.5)


def other_base_adapter(parents: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "other-base"
    copy.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (copy / name).write_bytes((parents["p2"] / name).read_bytes())
    manifest = {"base_model": {"name": "another-model", "config_sha256": "0" * 64}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def dora_adapter(parents: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "dora"
    copy.mkdir()
    (copy / "adapter_model.safetensors").write_bytes(
        (parents["p2"] / "adapter_model.safetensors").read_bytes()
    )
    config = json.loads((parents["p2"] / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    return copy


@pytest.mark.parametrize(
    ("second", "weights", "method", "options", "message"),
    [
        (None, [1.0], "cat", {}, "combine takes 2 to 8 adapters, got 1"),
        ("p2", [0.5], "cat", {}, "--weights gives 1 weights for 2 adapters"),
        ("p2", [0.5, float("nan")], "cat", {}, "each weight must be a number in [-10, 10]"),
        ("p2", [0.0, 0.0], "cat", {}, "the weights are all zero"),
        ("p2", [0.5, 0.5], "average", {}, "method must be one of"),
        ("r16", [0.5, 0.5], "cat", {}, "cat gives rank 24 (8 + 16 for cat)"),
        ("r16", [0.5, 0.5], "linear", {}, "linear needs adapters of one rank, got ranks [8, 16]"),
        ("p2", [0.5, 0.5], "cat", {"max_rank": 8}, "cat gives rank 16"),
        ("p2", [0.5, 0.5], "svd", {"svd_rank": 12}, "--svd-rank must be one of"),
        ("p2", [0.5, 0.5], "cat", {"svd_rank": 16}, "--svd-rank applies to --method svd"),
        ("p2", [0.5, 0.5], "cat", {"density": 0.5}, "--density applies to ties and dare_linear"),
        ("p2", [0.5, 0.5], "ties", {"density": 0.0}, "density must be a number in (0, 1]"),
        ("p1", [0.5, 0.5], "cat", {}, "the same adapter is given twice"),
        ("qk", [0.5, 0.5], "cat", {}, "adapt different modules"),
        ("other", [0.5, 0.5], "cat", {}, "was trained on 'another-model with config.json"),
        ("dora", [0.5, 0.5], "cat", {}, "it is a DoRA adapter"),
        ("p2", [0.5, 0.5], "cat", {"name": "bad name"}, "name must be 1 to 64 characters"),
        ("p2", [0.5, 0.5], "cat", {"sampling_defaults": {"top_p": 2}}, "sampling_defaults.top_p"),
    ],
)
def test_refusals_come_before_any_model_is_loaded(
    parents: dict[str, Path],
    tmp_path: Path,
    second: str | None,
    weights: list[float],
    method: str,
    options: dict[str, Any],
    message: str,
) -> None:
    paths = {**parents, "other": other_base_adapter(parents, tmp_path)}
    paths["dora"] = dora_adapter(parents, tmp_path)
    adapters = [parents["p1"]] + ([paths[second]] if second else [])
    with pytest.raises(CombineError) as caught:
        plan_combine(adapters, weights, method, output=tmp_path / "out", **options)
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_sampling_defaults_and_a_name_reach_the_manifest(
    parents: dict[str, Path], tmp_path: Path
) -> None:
    plan = plan_combine(
        [parents["p1"], parents["p2"]],
        [1, 1],
        "cat",
        output=tmp_path / "dir",
        name="mixed.v1",
        sampling_defaults={"temperature": 0.3},
    )
    assert (plan.name, plan.rank, plan.sampling_defaults) == ("mixed.v1", 16, {"temperature": 0.3})


def test_cli_refuses_bad_weights_and_symlinked_output(
    parents: dict[str, Path], tmp_path: Path
) -> None:
    argv = ["combine", str(parents["p1"]), str(parents["p2"]), "--method", "cat"]
    result = runner.invoke(app, [*argv, "--weights", "0.7;0.3", "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "--weights must be numbers separated by commas" in result.output

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    result = runner.invoke(app, [*argv, "--weights", "1,1", "--output", str(tmp_path / "link")])
    assert result.exit_code == 2
    assert "is a symlink" in " ".join(result.output.split())
