"""The environment of the managed vLLM child: an allow-list, never the gateway's whole one.

Called by :meth:`gateway.engines.managed.ManagedVLLMEngine.environment` for every child it
spawns (base-model preparation and vLLM). The gateway's environment holds its own secrets
(``LORA_GATEWAY_ADMIN_TOKEN``, ``LORA_GATEWAY_API_KEYS``, the engine key, a database URL with a
password) and whatever else the operator's shell carries; the child gets only what a Python
process, vLLM, PyTorch, Hugging Face and the CPU/GPU runtimes read. A variable that is not
named here does not reach the engine: add its name (or prefix) here when vLLM needs a new one.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Exact names the child may inherit: process basics, locale, time zone, temp dirs.
ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TEMP",
        "TMP",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",  # vLLM CPU docs preload tcmalloc / Intel OpenMP this way
        "TOKENIZERS_PARALLELISM",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
    }
)

#: Prefixes of variables that configure the runtimes the engine is made of.
ALLOWED_PREFIXES = (
    "LC_",  # locale
    "XDG_",  # cache and data homes (Hugging Face and torch caches follow them)
    "PYTHON",  # PYTHONPATH, PYTHONDONTWRITEBYTECODE, PYTHONHASHSEED, ...
    "VLLM_",  # vLLM's own settings (VLLM_API_KEY is replaced by the gateway's engine key)
    "HF_",  # Hugging Face hub and cache
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "TORCH",  # TORCH_*, TORCHINDUCTOR_*, TORCH_HOME
    "OMP_",  # OpenMP threads
    "KMP_",  # Intel OpenMP
    "MKL_",
    "ONEDNN_",
    "DNNL_",
    "CUDA_",  # CUDA_VISIBLE_DEVICES, CUDA_HOME
    "NVIDIA_",
    "NCCL_",
    "ROCM_",
    "HIP_",
    "TRITON_",
)

#: Never passed on, even if a prefix above would match: the gateway's own settings.
GATEWAY_PREFIX = "LORA_GATEWAY_"


def is_allowed(name: str) -> bool:
    """Whether the child may inherit the variable ``name`` from the gateway."""
    if name.startswith(GATEWAY_PREFIX):
        return False
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def child_environment(inherited: Mapping[str, str], *layers: Mapping[str, str]) -> dict[str, str]:
    """The allowed part of ``inherited``, then each of ``layers`` applied in order."""
    env = {name: value for name, value in inherited.items() if is_allowed(name)}
    for layer in layers:
        env.update(layer)
    return env
