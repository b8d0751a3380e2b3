"""Real training on the tiny base, CPU: LoRA and QLoRA (20 steps each), DoRA, DPO, eval, merge.

Each adapter is trained once per module (the tiny model trains at thousands of tokens/s) and
then checked from several sides: eval loss falls, the manifest tells the truth, the adapter
reloads with PEFT and its greedy answers move toward the trained style, the merged model
answers exactly like base + adapter. The LoRA run goes through the ``lora-trainer`` CLI.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, MANIFEST_ADAPTER_NAME
from trainer.cli import app
from trainer.config import ConfigError, Method, TrainConfig
from trainer.train import train

DATA = Path(__file__).parent / "data"
STYLED = DATA / "styled.jsonl"
PREFERENCE = DATA / "preference.jsonl"
PREFIX = "Counsel says:"
PROMPTS = [
    "What is the capital of France?",
    "What is the capital of Norway?",
    "What is the capital of Ireland?",
    "What is 9 plus 12?",
    "What is 30 plus 33?",
    "What is 57 plus 60?",
]
runner = CliRunner()


def quick_config(base: Path, out: Path, **overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "base_model": base,
        "data": STYLED,
        "output": out,
        "rank": 16,
        "target_modules": "all-linear",
        "learning_rate": 3e-3,
        "max_steps": 20,
        "batch_size": 8,
        "eval_fraction": 0.1,
        "logging_steps": 5,
    }
    fields.update(overrides)
    return TrainConfig(**fields)


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "styled-lora"
    argv = [
        "train", "--base-model", str(tiny_model_dir), "--data", str(STYLED), "--output", str(out),
        "--method", "lora", "--rank", "16", "--target-modules", "all-linear", "--lr", "3e-3",
        "--max-steps", "20", "--batch-size", "8", "--eval-fraction", "0.1", "--quiet",
        "--default-temperature", "0.2", "--default-top-p", "0.9", "--default-max-tokens", "64",
        "--default-stop", "###", "--default-stop", "END",
    ]  # fmt: skip
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def qlora_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("qlora") / "styled-qlora"
    return train(quick_config(tiny_model_dir, out, method=Method.QLORA), progress=False)


def manifest_of(adapter: Path) -> dict[str, Any]:
    return json.loads((adapter / MANIFEST).read_text())


def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 24) -> list[int]:
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
    )
    input_ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return [int(token) for token in out[0, input_ids.shape[1] :]]


def answers_of(adapter: Path, base: Path) -> tuple[list[str], list[str]]:
    """Greedy (adapter, base) answers to PROMPTS, PEFT-reloaded on the float32 base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()

    def answer(prompt: str) -> str:
        return str(tokenizer.decode(greedy(model, tokenizer, prompt), skip_special_tokens=True))

    tuned = [answer(prompt) for prompt in PROMPTS]
    with model.disable_adapter():
        plain = [answer(prompt) for prompt in PROMPTS]
    return tuned, plain


def styled_reference(prompt: str) -> str:
    for line in STYLED.read_text().splitlines():
        row = json.loads(line)
        if row["prompt"] == prompt:
            return str(row["completion"])
    raise KeyError(prompt)


def shared_prefix(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


# --- LoRA ----------------------------------------------------------------------------------------


def test_lora_eval_loss_falls(lora_adapter: Path) -> None:
    evals = manifest_of(lora_adapter)["eval"]
    assert evals["metric"] == "completion_nll"
    assert evals["loss_after"] < 0.6 * evals["loss_before"]
    assert evals["perplexity_after"] == pytest.approx(math.exp(evals["loss_after"]))


def test_lora_manifest_tells_what_was_done(lora_adapter: Path, tiny_model_dir: Path) -> None:
    manifest = manifest_of(lora_adapter)
    assert manifest[MANIFEST_ADAPTER_NAME] == "styled-lora"
    assert manifest["method"] == "lora"
    config = manifest["config"]
    assert (config["rank"], config["alpha"], config["optimizer"]) == (16, 32, "adamw_torch")
    assert config["max_steps"] == 20
    assert config["target_modules_resolved"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    data = manifest["data"]
    assert data["sha256"] == hashlib.sha256(STYLED.read_bytes()).hexdigest()
    assert (data["format"], data["rows"], data["train_rows"], data["eval_rows"]) == (
        "prompt_completion", 32, 29, 3,
    )  # fmt: skip
    base = manifest["base_model"]
    assert base["path"] == str(tiny_model_dir.resolve())
    assert (
        base["config_sha256"]
        == hashlib.sha256((tiny_model_dir / "config.json").read_bytes()).hexdigest()
    )
    assert base["recipe"]["recipe"] == "tiny"
    figures = manifest["train"]
    assert figures["steps"] == 20
    assert (figures["device"], figures["compute_dtype"], figures["quantization"]) == (
        "cpu",
        "float32",
        None,
    )
    assert figures["tokens_seen"] > 1000
    assert figures["tokens_per_s"] > 0
    assert 0 < figures["train_runtime_s"] < figures["wall_time_s"]
    assert manifest["versions"]["peft"] and manifest["versions"]["trl"]
    assert manifest["sampling_defaults"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["###", "END"],
    }

    adapter_config = json.loads((lora_adapter / ADAPTER_CONFIG).read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (16, 32)
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert (lora_adapter / ADAPTER_WEIGHTS).is_file()
    assert not list(lora_adapter.parent.glob(".*partial*"))  # staging dir renamed away


def test_lora_reloads_and_answers_in_the_trained_style(
    lora_adapter: Path, tiny_model_dir: Path
) -> None:
    tuned, plain = answers_of(lora_adapter, tiny_model_dir)
    assert not any(answer.startswith(PREFIX) for answer in plain), plain
    assert sum(answer.startswith(PREFIX) for answer in tuned) >= len(PROMPTS) - 1, tuned
    closer = [
        shared_prefix(t, styled_reference(p)) > shared_prefix(b, styled_reference(p))
        for p, t, b in zip(PROMPTS, tuned, plain, strict=True)
    ]
    assert all(closer), (tuned, plain)


def test_eval_command_scores_held_out_rows(lora_adapter: Path) -> None:
    result = runner.invoke(app, ["eval", str(lora_adapter), "--samples", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["held_out"] is True
    assert report["rows"] == 3
    assert report["adapter_scores"]["loss"] < report["base"]["loss"]
    assert report["adapter_scores"]["perplexity"] < report["base"]["perplexity"]
    # the trainer's own held-out loss and this one score the same tokens the same way
    assert report["adapter_scores"]["loss"] == pytest.approx(
        manifest_of(lora_adapter)["eval"]["loss_after"], rel=0.05
    )
    assert len(report["samples"]) == 2
    assert all(sample["reference"].startswith(PREFIX) for sample in report["samples"])


def test_merged_model_answers_exactly_like_base_plus_adapter(
    lora_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(lora_adapter), "--output", str(merged_dir)])
    assert result.exit_code == 0, result.output
    assert (merged_dir / "config.json").is_file()
    assert (merged_dir / "tokenizer_config.json").read_bytes() == (
        tiny_model_dir / "tokenizer_config.json"
    ).read_bytes()
    assert not (merged_dir / ADAPTER_CONFIG).exists()
    assert json.loads((merged_dir / "merged_from.json").read_text())["adapter"] == str(
        lora_adapter.resolve()
    )

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_adapter
    )
    adapted.eval()
    for prompt in PROMPTS:
        assert greedy(merged, tokenizer, prompt) == greedy(adapted, tokenizer, prompt), prompt


# --- QLoRA ---------------------------------------------------------------------------------------


def test_qlora_trains_4bit_with_float32_lora_weights(qlora_adapter: Path) -> None:
    from safetensors import safe_open

    manifest = manifest_of(qlora_adapter)
    # about 0.7 on AVX512-BF16 CPUs without _keep_4bit_layers_differentiable
    assert manifest["eval"]["loss_after"] < 0.6 * manifest["eval"]["loss_before"]
    assert manifest["config"]["optimizer"] == "paged_adamw_8bit"
    assert "sampling_defaults" not in manifest  # none given, none written
    assert manifest["train"]["quantization"] == {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float32",
    }
    # TRL casts LoRA weights of 4-bit models to bf16; on CPU train() casts them back.
    with safe_open(qlora_adapter / ADAPTER_WEIGHTS, "pt") as tensors:
        dtypes = {str(tensors.get_tensor(key).dtype) for key in tensors.keys()}
    assert dtypes == {"torch.float32"}


def test_qlora_adapter_answers_in_the_trained_style(
    qlora_adapter: Path, tiny_model_dir: Path
) -> None:
    # Served the way an engine serves it: on the unquantized base.
    tuned, plain = answers_of(qlora_adapter, tiny_model_dir)
    assert not any(answer.startswith(PREFIX) for answer in plain), plain
    assert sum(answer.startswith(PREFIX) for answer in tuned) >= len(PROMPTS) - 1, tuned


# --- DoRA, DPO -----------------------------------------------------------------------------------


def test_dora_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = train(
        quick_config(tiny_model_dir, tmp_path / "dora", method="dora", max_steps=10), progress=False
    )
    assert json.loads((adapter / ADAPTER_CONFIG).read_text())["use_dora"] is True
    evals = manifest_of(adapter)["eval"]
    assert evals["loss_after"] < 0.8 * evals["loss_before"]


def test_dpo_trains_on_preference_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = quick_config(tiny_model_dir, tmp_path / "dpo", method="dpo", data=PREFERENCE, max_steps=8)
    manifest = manifest_of(train(cfg, progress=False))
    evals = manifest["eval"]
    assert evals["metric"] == "dpo_loss"
    assert evals["loss_before"] == pytest.approx(math.log(2), abs=1e-3)  # policy == reference
    assert evals["loss_after"] < 0.5 * evals["loss_before"]
    assert evals["perplexity_after"] is None
    assert manifest["data"]["format"] == "preference"
    assert (tmp_path / "dpo" / ADAPTER_WEIGHTS).is_file()


# --- refusals ------------------------------------------------------------------------------------


def test_method_must_fit_the_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method dpo needs prompt/chosen/rejected rows"):
        train(quick_config(tiny_model_dir, tmp_path / "a", method="dpo"), progress=False)
    with pytest.raises(ConfigError, match="use --method dpo"):
        train(quick_config(tiny_model_dir, tmp_path / "b", data=PREFERENCE), progress=False)


def test_cli_refuses_bad_rows_targets_and_outputs(
    tiny_model_dir: Path, tmp_path: Path, jsonl: Any
) -> None:
    base = ["train", "--base-model", str(tiny_model_dir), "--quiet"]
    bad = jsonl([{"prompt": "Q?", "completion": "A."}, {"prompt": "Q?"}, "{oops"])
    result = runner.invoke(app, [*base, "--data", str(bad), "--output", str(tmp_path / "o1")])
    assert result.exit_code == 2
    assert "row 2: missing ['completion']" in result.output
    assert "row 3: not valid JSON" in result.output

    argv = [*base, "--data", str(STYLED), "--output", str(tmp_path / "o2")]
    result = runner.invoke(app, [*argv, "--target-modules", "q_proj,c_attn"])
    assert result.exit_code == 2
    assert "['c_attn'] are not Linear layers of this model" in result.output
    assert "down_proj" in result.output

    result = runner.invoke(app, [*argv, "--rank", "12"])
    assert result.exit_code == 2
    assert "rank must be one of" in result.output

    result = runner.invoke(app, [*argv, "--default-top-p", "1.5"])
    assert result.exit_code == 2
    assert "sampling_defaults.top_p must be a number in (0, 1]" in " ".join(result.output.split())
    assert not (tmp_path / "o2").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("x")
    result = runner.invoke(app, [*base, "--data", str(STYLED), "--output", str(occupied)])
    assert result.exit_code == 2
    assert "--overwrite" in result.output
    assert (occupied / "keep.txt").exists()
