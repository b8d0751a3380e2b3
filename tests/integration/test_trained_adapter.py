"""An adapter trained by ``trainer.train`` on the tiny base, registered with the trainer's own
client, served through the gateway on the session's real vLLM engine: it answers in the trained
style, the base does not, and vLLM's greedy answer equals HF transformers + PEFT token for token
(the engine runs float32)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.integration.registry_gateway import ADMIN_TOKEN, registry_gateway
from trainer.config import TrainConfig
from trainer.register import register_adapter
from trainer.train import train

pytestmark = pytest.mark.integration

STYLED = Path(__file__).parents[1] / "trainer" / "data" / "styled.jsonl"
PREFIX = "Counsel says:"
PROMPTS = ("What is the capital of France?", "What is the capital of Norway?", "What is 9 plus 12?")
MAX_TOKENS = 16


def hf_greedy(base: Path, adapter: Path, prompts: tuple[str, ...]) -> list[str]:
    """The same greedy answers computed in-process with transformers + PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
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


async def test_trained_adapter_answers_in_the_trained_style(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    root = tmp_path / "adapters"
    cfg = TrainConfig(
        base_model=tiny_model_dir,
        data=STYLED,
        output=root / "counsel-lora",
        rank=16,  # the engine's --max-lora-rank
        target_modules="all-linear",
        learning_rate=3e-3,
        max_steps=30,
        batch_size=8,
    )
    adapter = await asyncio.to_thread(train, cfg, progress=False)
    expected = await asyncio.to_thread(hf_greedy, tiny_model_dir, adapter, PROMPTS)

    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        # what `lora-trainer train --register URL` does once training is done
        answer = await asyncio.to_thread(
            register_adapter, gw.url, "counsel-lora", adapter, token=ADMIN_TOKEN
        )
        assert answer["name"] == "counsel-lora"
        assert answer["state"] == "loaded"

        for prompt, hf_answer in zip(PROMPTS, expected, strict=True):
            messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
            tuned = await gw.openai.chat.completions.create(
                model="counsel-lora", messages=messages, temperature=0, max_tokens=MAX_TOKENS
            )
            plain = await gw.openai.chat.completions.create(
                model=vllm_engine.base_model,
                messages=messages,
                temperature=0,
                max_tokens=MAX_TOKENS,
            )
            tuned_text = tuned.choices[0].message.content or ""
            plain_text = plain.choices[0].message.content or ""
            assert tuned.model == "counsel-lora"
            assert tuned_text.startswith(PREFIX), tuned_text
            assert not plain_text.startswith(PREFIX), plain_text
            assert tuned_text == hf_answer
