"""Merge an adapter into its base: a standalone model directory an engine serves without LoRA.

    lora-trainer merge adapters/my-lora --output models/my-lora-merged

Called by ``lora-trainer merge`` (:mod:`trainer.cli`) and tests. The base is loaded unquantized
(float32 unless ``dtype`` says otherwise, also for QLoRA adapters), the adapter applied with
PEFT and folded in with ``merge_and_unload``. The base's tokenizer and generation files are
copied verbatim, so the merged model formats chats exactly like its base. This is also the way
to serve a DoRA adapter: vLLM loads LoRA adapters but not DoRA ones. Like training, the output
is checked first and the result written beside it and swapped in whole (:mod:`trainer.output`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal

from adapters.contract import ADAPTER_CONFIG
from trainer.manifest import base_model_identity, read_manifest
from trainer.models import ModelLoadError, adapter_base_path, check_model_dir
from trainer.output import checked_output, publish

MERGE_INFO_FILE = "merged_from.json"
# Files that make a model directory's tokenizer and generation defaults, copied from the base.
BASE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
)

MergeDType = Literal["float32", "bfloat16", "float16"]


def merge(
    adapter: Path,
    output: Path,
    *,
    base_model: Path | None = None,
    dtype: MergeDType = "float32",
    overwrite: bool = False,
) -> Path:
    """Write ``base + adapter`` as one model directory at ``output``; return it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = Path(adapter).expanduser()
    if not (adapter / ADAPTER_CONFIG).is_file():
        raise ModelLoadError(f"{adapter} is not a PEFT adapter directory (no {ADAPTER_CONFIG})")
    output = checked_output(output, overwrite=overwrite)
    base = check_model_dir(base_model or adapter_base_path(adapter))
    torch_dtype = getattr(torch, dtype)

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype, device_map="cpu")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()

    def write(staging: Path) -> None:
        merged.save_pretrained(str(staging))
        for name in BASE_FILES:
            if (base / name).is_file():
                shutil.copyfile(base / name, staging / name)
        info = {
            "adapter": str(adapter.resolve()),
            "adapter_manifest": read_manifest(adapter),
            "base_model": base_model_identity(base),
            "dtype": dtype,
        }
        (staging / MERGE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")

    return publish(output, write)
