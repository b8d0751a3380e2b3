"""Held-out evaluation of an adapter against its base: loss, perplexity, sample generations.

    lora-trainer eval adapters/my-lora                 # data, split and base from manifest.json
    lora-trainer eval adapters/my-lora --data other.jsonl --samples 5

Called by ``lora-trainer eval`` (:mod:`trainer.cli`) and tests. The held-out rows are rebuilt
from the adapter's ``manifest.json`` (same data file, seed and eval fraction as training), or
all rows of ``--data`` for an adapter without one. Loss is the mean negative log-likelihood of
the completion tokens only (the prompt is formatted by the base model's chat template, exactly
as in training), computed for the base (adapter disabled) and for the adapter; perplexity is
its exponential. A few prompts are answered greedily by both, side by side. The base is loaded
unquantized, as an engine serves it, also for QLoRA adapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.contract import MANIFEST
from trainer.config import ConfigError
from trainer.data import Row, load_training_data
from trainer.manifest import read_manifest
from trainer.models import (
    ModelLoadError,
    adapter_base_path,
    detect_device,
    load_adapter_model,
    load_tokenizer,
)

MAX_SAMPLES = 20
MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class SideBySide:
    prompt: str
    reference: str
    base: str
    adapter: str


@dataclass
class EvalReport:
    adapter: Path
    base_model: Path
    data: Path
    held_out: bool  # False: no eval split was recorded, every row was scored
    rows: int
    completion_tokens: int
    base_loss: float
    adapter_loss: float
    samples: list[SideBySide] = field(default_factory=list)

    @property
    def base_perplexity(self) -> float:
        return math.exp(min(self.base_loss, 700.0))

    @property
    def adapter_perplexity(self) -> float:
        return math.exp(min(self.adapter_loss, 700.0))


def evaluate(
    adapter: Path,
    *,
    base_model: Path | None = None,
    data: Path | None = None,
    samples: int = 3,
    max_new_tokens: int = 48,
    max_seq_len: int | None = None,
) -> EvalReport:
    """Score ``adapter`` and its base on held-out rows; generate ``samples`` answers from each."""
    import torch

    if not 0 <= samples <= MAX_SAMPLES:
        raise ConfigError(f"samples must be in [0, {MAX_SAMPLES}], got {samples}")
    if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ConfigError(f"max_new_tokens must be in [1, {MAX_NEW_TOKENS}], got {max_new_tokens}")
    adapter = Path(adapter)
    manifest = read_manifest(adapter) or {}
    config = manifest.get("config", {})
    base = Path(base_model) if base_model else adapter_base_path(adapter)
    rows, data_path, held_out = _eval_rows(data, config)
    max_len = max_seq_len or int(config.get("max_seq_len", 2048))

    device = detect_device()
    tokenizer = load_tokenizer(base)
    model = load_adapter_model(adapter, base, device)
    encoded = [item for row in rows if (item := _encode(tokenizer, row, max_len)) is not None]
    if not encoded:
        raise ModelLoadError(f"no row of {data_path} has completion tokens within {max_len}")

    with torch.no_grad():
        adapter_loss, tokens = _completion_nll(model, encoded, device)
        with model.disable_adapter():
            base_loss, _ = _completion_nll(model, encoded, device)
        side_by_side = []
        for row in rows[:samples]:
            prompt_ids = _prompt_ids(tokenizer, row["prompt"])
            answer = _generate(model, tokenizer, prompt_ids, max_new_tokens, device)
            with model.disable_adapter():
                base_answer = _generate(model, tokenizer, prompt_ids, max_new_tokens, device)
            side_by_side.append(
                SideBySide(
                    prompt=row["prompt"][-1]["content"],
                    reference=_answer_of(row)[0]["content"],
                    base=base_answer,
                    adapter=answer,
                )
            )
    return EvalReport(
        adapter=adapter,
        base_model=base,
        data=data_path,
        held_out=held_out,
        rows=len(encoded),
        completion_tokens=tokens,
        base_loss=base_loss,
        adapter_loss=adapter_loss,
        samples=side_by_side,
    )


def _eval_rows(data: Path | None, config: dict[str, Any]) -> tuple[list[Row], Path, bool]:
    """The held-out rows of training when the manifest says how to rebuild them."""
    recorded = config.get("data")
    if data is None and recorded is None:
        raise ModelLoadError(f"the adapter has no {MANIFEST} naming its data: pass --data")
    path = Path(data) if data is not None else Path(str(recorded))
    loaded = load_training_data(path)
    fraction = float(config.get("eval_fraction", 0.0))
    same_file = recorded is not None and path.resolve() == Path(recorded).resolve()
    if same_file and fraction > 0:
        _, held_out = loaded.split(fraction, int(config.get("seed", 42)))
        return held_out, path, True
    return loaded.rows, path, False


def _answer_of(row: Row) -> list[dict[str, str]]:
    # Preference rows are scored on their chosen answer.
    return row["completion"] if "completion" in row else row["chosen"]


def _prompt_ids(tokenizer: Any, prompt: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _encode(tokenizer: Any, row: Row, max_len: int) -> tuple[list[int], int] | None:
    """(token ids, index of the first completion token), truncated to ``max_len``."""
    prompt = _prompt_ids(tokenizer, row["prompt"])
    full = tokenizer.apply_chat_template(row["prompt"] + _answer_of(row), tokenize=True)
    full = list(full["input_ids"] if hasattr(full, "keys") else full)
    start = 0  # where prompt and prompt+completion diverge (as TRL does)
    while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
        start += 1
    start = max(start, 1)  # the first token has no prediction to score
    full = full[:max_len]
    return (full, start) if start < len(full) else None


def _completion_nll(
    model: Any, encoded: list[tuple[list[int], int]], device: str
) -> tuple[float, int]:
    import torch

    total, count = 0.0, 0
    for ids, start in encoded:
        input_ids = torch.tensor([ids], device=device)
        logits = model(input_ids=input_ids).logits[0, :-1].float()
        targets = input_ids[0, 1:]
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        total += float(losses[start - 1 :].sum())
        count += len(ids) - start
    return total / count, count


def _generate(
    model: Any, tokenizer: Any, prompt_ids: list[int], max_new_tokens: int, device: str
) -> str:
    import torch

    input_ids = torch.tensor([prompt_ids], device=device)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    return str(tokenizer.decode(output[0, len(prompt_ids) :], skip_special_tokens=True)).strip()
