"""Loading base models, tokenizers and adapters the same way on CPU and CUDA.

Used by :mod:`trainer.train`, :mod:`trainer.evaluate` and :mod:`trainer.merge`. The device is
detected (CUDA when present, else CPU) and picks the dtypes: bf16 on CUDA; float32 on CPU,
where bf16 compute is 5-13x slower without AVX512-BF16/AMX (see notes/trainer-cpu.md).
torch, transformers and peft are imported inside the functions: importing this module is free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adapters.contract import ADAPTER_CONFIG

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Device = Literal["cpu", "cuda"]


class ModelLoadError(ValueError):
    """A base model or adapter directory cannot be loaded; the message says which and why."""


def detect_device() -> Device:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compute_dtype(device: Device) -> torch.dtype:
    import torch

    return torch.bfloat16 if device == "cuda" else torch.float32


def check_model_dir(path: Path) -> Path:
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"base model {str(path)!r} is not a model directory (no config.json)")
    return path.resolve()


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"the tokenizer of {path} has no chat template to format rows with")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    path: Path, device: Device, *, quantize_4bit: bool = False, dtype: Any = None
) -> PreTrainedModel:
    """The base model on ``device``; ``quantize_4bit``: NF4 with double quantization (QLoRA)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = dtype or compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    return AutoModelForCausalLM.from_pretrained(str(check_model_dir(path)), **kwargs)


def load_adapter_model(adapter: Path, base: Path, device: Device) -> Any:
    """``base`` with the PEFT adapter in ``adapter`` on top (a ``PeftModel``), in eval mode."""
    from peft import PeftModel

    if not (Path(adapter) / ADAPTER_CONFIG).is_file():
        raise ModelLoadError(f"{adapter} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    model = PeftModel.from_pretrained(load_base_model(base, device), str(adapter))
    model.eval()
    return model


def adapter_base_path(adapter: Path) -> Path:
    """The base model an adapter was trained on, from its adapter_config.json."""
    import json

    config = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{adapter}/{ADAPTER_CONFIG} names no base model; pass --base-model")
    return Path(base)


def linear_module_names(model: Any) -> set[str]:
    """The last dotted part of every Linear layer's name (``q_proj``, ``down_proj``, ...)."""
    import torch

    names = set()
    for name, module in model.named_modules():
        # bitsandbytes' Linear4bit subclasses torch.nn.Linear, so QLoRA models count too.
        if isinstance(module, torch.nn.Linear) and name:
            names.add(name.rsplit(".", 1)[-1])
    return names
