"""The fixed CPU LoRA ops against vLLM's own: same results for rows with an adapter, no delta
for rows without one (index -1), where vLLM's ops apply the last slot's weights.

In-process, on small tensors; imports torch and vllm's torch ops (no engine). The end-to-end
proof on a real engine is tests/integration/test_cpu_lora_fix.py.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest
import torch

from gateway.engines import cpu_lora_fix as fix

lora_ops = importlib.import_module("vllm.lora.ops.torch_ops.lora_ops")
assert not getattr(lora_ops, fix._PATCHED_FLAG, False), "patched before the test captured it"
ORIGINAL: dict[str, Callable[..., Any]] = {name: getattr(lora_ops, name) for name in fix._OPS}

SLOTS, TOKENS, HIDDEN, RANK, OUT = 3, 6, 16, 4, 12


@pytest.fixture
def weights() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    lora_a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=generator)
    lora_b = torch.randn(SLOTS, 1, OUT, RANK, generator=generator)
    return lora_a, lora_b


def _inputs(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


VALID = torch.tensor([0, 1, 2, 2, 1, 0])
MIXED = torch.tensor([-1, 0, -1, 2, -1, 1])


@pytest.mark.parametrize("indices", [VALID, MIXED], ids=["all-adapters", "mixed"])
def test_shrink(weights: tuple[torch.Tensor, torch.Tensor], indices: torch.Tensor) -> None:
    x = _inputs(1, TOKENS, HIDDEN)
    expected = torch.zeros(TOKENS, RANK)
    ORIGINAL["bgmv_shrink"](x, weights[0], expected, indices, 0.5)
    got = torch.full((TOKENS, RANK), 7.0)
    fix.bgmv_shrink(x, weights[0], got, indices, 0.5)
    has = indices >= 0
    torch.testing.assert_close(got[has], expected[has])
    assert torch.all(got[~has] == 0)
    if (~has).any():  # vLLM's op gives those rows the last slot's product: the defect
        assert torch.all(expected[~has].abs().sum(dim=1) > 0)


@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("indices", [VALID, MIXED], ids=["all-adapters", "mixed"])
def test_expand(
    weights: tuple[torch.Tensor, torch.Tensor], indices: torch.Tensor, add_inputs: bool
) -> None:
    x = _inputs(2, TOKENS, RANK)
    start = _inputs(3, TOKENS, OUT)
    expected = start.clone()
    ORIGINAL["bgmv_expand"](x, weights[1], expected, indices, add_inputs)
    got = start.clone()
    fix.bgmv_expand(x, weights[1], got, indices, add_inputs)
    has = indices >= 0
    torch.testing.assert_close(got[has], expected[has])
    torch.testing.assert_close(got[~has], start[~has])  # rows without an adapter: untouched


@pytest.mark.parametrize("add_inputs", [True, False])
@pytest.mark.parametrize("indices", [VALID, MIXED], ids=["all-adapters", "mixed"])
def test_expand_slice(
    weights: tuple[torch.Tensor, torch.Tensor], indices: torch.Tensor, add_inputs: bool
) -> None:
    x = _inputs(4, TOKENS, RANK)
    start = _inputs(5, TOKENS, OUT + 8)
    expected = start.clone()
    ORIGINAL["bgmv_expand_slice"](x, weights[1], expected, indices, 4, OUT, add_inputs)
    got = start.clone()
    fix.bgmv_expand_slice(x, weights[1], got, indices, 4, OUT, add_inputs)
    has = indices >= 0
    torch.testing.assert_close(got[has], expected[has])
    torch.testing.assert_close(got[~has], start[~has])


def test_register_patches_every_reference_once(
    monkeypatch: pytest.MonkeyPatch, weights: tuple[torch.Tensor, torch.Tensor]
) -> None:
    modules = [importlib.import_module(name) for name in fix._TARGET_MODULES]
    for module in modules:  # undone after the test, so other tests see vLLM's own ops
        for name in fix._OPS:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, getattr(module, name))
        monkeypatch.setattr(module, fix._PATCHED_FLAG, False, raising=False)

    fix.register()
    fix.register()  # idempotent
    assert fix.is_applied()
    punica_cpu = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")
    for name in fix._OPS:
        assert getattr(punica_cpu, name) is getattr(fix, name)
        assert getattr(lora_ops, name) is getattr(fix, name)

    # The sgmv (prefill) ops call the bgmv ones through module globals: fixed too.
    x = _inputs(6, TOKENS, HIDDEN)
    out = torch.full((TOKENS, RANK), 7.0)
    seq_lens = torch.tensor([2, 4])
    lora_ops.sgmv_shrink(
        x, weights[0], out, torch.tensor([0, 2]), seq_lens, torch.tensor([-1, 1]), 2, 4, TOKENS, 1.0
    )
    assert torch.all(out[:2] == 0) and torch.all(out[2:].abs().sum(dim=1) > 0)
