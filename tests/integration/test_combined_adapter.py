"""An adapter combined by ``lora-trainer combine --register``, served through the gateway on the
session's real vLLM engine: its greedy answers equal HF transformers + PEFT's answers for the
same combination, token for token (the engine runs float32).

The two parents are real PEFT adapters of the tiny base (rank 8, q_proj and v_proj, seeded
weights). ``cat`` with weights 0.7 and 0.3 gives rank 16, the engine's ``--max-lora-rank``.
The HF side builds the combination itself, in memory, with ``add_weighted_adapter``: it shares
no code with the trainer's combine beyond PEFT.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam
from typer.testing import CliRunner

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.registry_gateway import ADMIN_TOKEN, registry_gateway
from trainer.cli import app

pytestmark = pytest.mark.integration

PROMPTS = ("What is the capital of France?", "What is 9 plus 12?", "Tell me a story.")
WEIGHTS = (0.7, 0.3)
MAX_TOKENS = 16


def hf_combined_greedy(base: Path, parents: list[Path], prompts: tuple[str, ...]) -> list[str]:
    """Greedy answers of base + add_weighted_adapter(cat) computed in-process."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), parents[0], "a"
    )
    model.load_adapter(str(parents[1]), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], list(WEIGHTS), "mix", combination_type="cat")
    model.set_adapter("mix")
    model.eval()
    answers = []
    for prompt in prompts:
        ids: Any = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        input_ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
            )
        answers.append(
            str(tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True))
        )
    return answers


async def test_combined_adapter_serves_what_peft_computes(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LORA_GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    root = tmp_path / "adapters"
    parents = [
        write_random_lora(root / f"combine-parent-{seed}", tiny_model_dir, seed=seed)
        for seed in (11, 12)
    ]
    combined = root / "combined-cat"
    expected = await asyncio.to_thread(hf_combined_greedy, tiny_model_dir, parents, PROMPTS)

    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        argv = [
            "combine", *map(str, parents), "--weights", ",".join(map(str, WEIGHTS)),
            "--method", "cat", "--max-rank", "16", "--output", str(combined),
            "--register", gw.url,
        ]  # fmt: skip
        result = await asyncio.to_thread(CliRunner().invoke, app, argv)
        assert result.exit_code == 0, result.output
        assert "registered 'combined-cat'" in " ".join(result.output.split())
        assert json.loads((combined / "adapter_config.json").read_text())["r"] == 16

        differs = False
        for prompt, hf_answer in zip(PROMPTS, expected, strict=True):
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
            mixed = await gw.openai.chat.completions.create(
                model="combined-cat", messages=messages, temperature=0, max_tokens=MAX_TOKENS
            )
            plain = await gw.openai.chat.completions.create(
                model=vllm_engine.base_model,
                messages=messages,
                temperature=0,
                max_tokens=MAX_TOKENS,
            )
            mixed_text = mixed.choices[0].message.content or ""
            assert mixed.model == "combined-cat"
            # vLLM holds back an incomplete UTF-8 sequence at the end of its output; HF decodes
            # it as U+FFFD. Everything else must be the same text.
            assert mixed_text == hf_answer.rstrip("\ufffd"), prompt
            differs |= mixed_text != (plain.choices[0].message.content or "")
        assert differs, "the combined adapter changed no answer of the base model"
