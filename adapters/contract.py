"""The on-disk contract of an adapter, as constants: defined here once, imported everywhere.

An adapter is a PEFT LoRA directory::

    NAME/
      adapter_config.json         ADAPTER_CONFIG   PEFT config: peft_type, r, lora_alpha, ...
      adapter_model.safetensors   ADAPTER_WEIGHTS  the LoRA tensors (never pickle)
      manifest.json               MANIFEST         optional, written by the trainer

Who reads or writes it: :mod:`adapters.layout` (reads it without torch), the gateway's
settings and startup scan, the trainer (writes it, reads it back for eval and merge), loadtest
and tests (write synthetic adapters). Pure constants and one predicate; no I/O, no imports
beyond ``re``, so the trainer and the gateway can both import it for free.
"""

from __future__ import annotations

import re

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Pickle formats that vLLM would ``torch.load`` when no safetensors file is present.
PICKLE_WEIGHTS = "adapter_model.bin"
PICKLE_WEIGHTS_PT = "adapter_model.pt"
MANIFEST = "manifest.json"
#: Every file name the contract knows; anything else in an adapter directory is ignored.
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST)

#: Manifest keys read by the gateway (the trainer, ``trainer.manifest``, writes more):
#: ``adapter_name`` is the name the trainer meant it to be served under; ``base_model`` is an
#: object with the base directory's ``name`` and the ``config_sha256`` of its config.json (a
#: plain string, the base's name or path, is accepted too).
MANIFEST_ADAPTER_NAME = "adapter_name"
MANIFEST_BASE_MODEL = "base_model"
MANIFEST_BASE_NAME = "name"
MANIFEST_BASE_CONFIG_SHA256 = "config_sha256"

#: vLLM's accepted values of ``--max-lora-rank``; an adapter's rank must not exceed the setting.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

#: The adapter name is a public OpenAI model id and part of the engine's LoRA name
#: ``NAME@vN.<tag>``, so ``@``, ``/``, spaces and control characters are out.
MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters from letters, digits, '.', '_' and '-', "
    "starting with a letter or digit"
)


def is_valid_name(name: object) -> bool:
    """Whether ``name`` follows :data:`NAME_RULE` (the whole string: no trailing newline)."""
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None
