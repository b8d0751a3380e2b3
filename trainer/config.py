"""TrainConfig: every knob of one training run, validated once, saved next to its output.

Built by :mod:`trainer.cli` from flags (or by tests directly) and consumed by
:func:`trainer.train.train`, which writes :meth:`TrainConfig.resolved` into ``manifest.json``.
Pure Python on purpose: importing this module never imports torch.

Defaults that depend on other fields are resolved here, not in the training code: ``alpha``
defaults to ``2 * rank`` and ``optimizer`` to ``paged_adamw_8bit`` for QLoRA and ``adamw_torch``
otherwise. Target modules are a preset name or an explicit list; an explicit list is checked
against the model's own module names by :func:`check_target_modules` once the model is loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from adapters.contract import MANIFEST_ADAPTER_NAME, NAME_RULE, VLLM_LORA_RANKS, is_valid_name
from adapters.sampling import SamplingDefaultsError, validate_sampling_defaults

E = TypeVar("E", bound=StrEnum)


class ConfigError(ValueError):
    """A training option has a value the trainer refuses; the message names it."""


class Method(StrEnum):
    QLORA = "qlora"  # 4-bit NF4 base (double quantization) + LoRA
    LORA = "lora"
    DORA = "dora"  # weight-decomposed LoRA (PEFT ``use_dora``)
    DPO = "dpo"  # LoRA trained with TRL's DPOTrainer on preference rows


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class Optimizer(StrEnum):
    ADAMW_TORCH = "adamw_torch"
    ADAMW_8BIT = "adamw_8bit"
    PAGED_ADAMW_8BIT = "paged_adamw_8bit"
    PAGED_ADAMW_32BIT = "paged_adamw_32bit"
    SGD = "sgd"


# Preset -> what PEFT receives. "all-linear" is PEFT's own keyword (every Linear but the output
# layer, MLP included); "attention" names the Llama-family projections.
TARGET_PRESETS: dict[str, str | tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "all-linear": "all-linear",
}

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_TARGET_MODULES = 32


@dataclass
class TrainConfig:
    """One training run. Invalid values raise :class:`ConfigError` naming the field."""

    base_model: Path
    data: Path
    output: Path
    method: Method = Method.LORA
    rank: int = 16
    alpha: int | None = None  # None: 2 * rank
    dropout: float = 0.05
    target_modules: str | Sequence[str] = "attention"
    learning_rate: float = 2e-4
    scheduler: Scheduler = Scheduler.COSINE
    warmup_ratio: float = 0.03
    epochs: float = 1.0
    max_steps: int | None = None  # set: overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    max_seq_len: int = 512
    gradient_checkpointing: bool = False
    optimizer: Optimizer | None = None  # None: paged_adamw_8bit for qlora, adamw_torch otherwise
    seed: int = 42
    eval_fraction: float = 0.1
    beta: float = 0.1  # DPO temperature; unused by the SFT methods
    logging_steps: int = 5
    name: str | None = None  # the adapter's name when registered; default: output dir name
    # what the gateway uses when a request omits them (adapters.sampling); None or {}: none
    sampling_defaults: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes saved in the manifest

    def __post_init__(self) -> None:
        self.base_model = _expand(self.base_model)
        self.data = _expand(self.data)
        self.output = _expand(self.output)  # trainer.output checks it before training
        self.method = _enum(Method, self.method, "method")
        self.scheduler = _enum(Scheduler, self.scheduler, "scheduler")
        if self.optimizer is None:
            self.optimizer = (
                Optimizer.PAGED_ADAMW_8BIT if self.method is Method.QLORA else Optimizer.ADAMW_TORCH
            )
        self.optimizer = _enum(Optimizer, self.optimizer, "optimizer")
        if self.alpha is None:
            self.alpha = 2 * self.rank if isinstance(self.rank, int) else None
        self.target_modules = _parse_targets(self.target_modules)

        _int_in("rank", self.rank, 1, 512)
        if self.rank not in VLLM_LORA_RANKS:
            raise ConfigError(
                f"rank must be one of {VLLM_LORA_RANKS} (what vLLM serves), got {self.rank}"
            )
        _int_in("alpha", self.alpha, 1, 4096)
        _float_in("dropout", self.dropout, 0.0, 0.9)
        _float_in("learning_rate", self.learning_rate, 1e-8, 1.0)
        _float_in("warmup_ratio", self.warmup_ratio, 0.0, 0.99)
        _float_in("epochs", self.epochs, 0.01, 1000.0)
        if self.max_steps is not None:
            _int_in("max_steps", self.max_steps, 1, 1_000_000)
        _int_in("batch_size", self.batch_size, 1, 1024)
        _int_in("grad_accum", self.grad_accum, 1, 1024)
        _int_in("max_seq_len", self.max_seq_len, 16, 32768)
        _int_in("seed", self.seed, 0, 2**32 - 1)
        _float_in("eval_fraction", self.eval_fraction, 0.0, 0.5)
        _float_in("beta", self.beta, 1e-4, 10.0)
        _int_in("logging_steps", self.logging_steps, 1, 100_000)
        if self.name is not None and not is_valid_name(self.name):
            raise ConfigError(f"name must be {NAME_RULE}, got {self.name!r}")
        if self.sampling_defaults is not None:
            try:
                self.sampling_defaults = validate_sampling_defaults(self.sampling_defaults) or None
            except SamplingDefaultsError as exc:
                raise ConfigError(str(exc)) from None
        if self.output.exists() and not self.output.is_dir():
            raise ConfigError(f"output {str(self.output)!r} exists and is not a directory")

    @property
    def adapter_name(self) -> str:
        return self.name or self.output.name

    @property
    def peft_target_modules(self) -> str | list[str]:
        """What PEFT's ``LoraConfig(target_modules=...)`` receives."""
        if isinstance(self.target_modules, str):
            preset = TARGET_PRESETS[self.target_modules]
            return preset if isinstance(preset, str) else list(preset)
        return list(self.target_modules)

    def resolved(self) -> dict[str, Any]:
        """The config as JSON-ready values, defaults filled in (saved in manifest.json)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, StrEnum):
                out[key] = value.value
            elif isinstance(value, tuple):
                out[key] = list(value)
        out[MANIFEST_ADAPTER_NAME] = self.adapter_name
        return out


def check_target_modules(requested: str | list[str], linear_names: Iterable[str]) -> None:
    """Refuse an explicit target list naming a module the model does not have.

    ``linear_names`` are the model's Linear layer names (the last dotted part, e.g. ``q_proj``).
    Presets pass unchecked: PEFT resolves them itself.
    """
    if isinstance(requested, str):
        return
    available = set(linear_names)
    missing = [name for name in requested if name not in available]
    if missing:
        raise ConfigError(
            f"target_modules {missing} are not Linear layers of this model; "
            f"it has {sorted(available)}"
        )


def _parse_targets(value: str | Sequence[str]) -> str | tuple[str, ...]:
    if isinstance(value, str):
        if value in TARGET_PRESETS:
            return value
        value = [part.strip() for part in value.split(",") if part.strip()]
    names = tuple(value)
    if not names:
        raise ConfigError(
            f"target_modules is empty; use a preset {sorted(TARGET_PRESETS)} or names"
        )
    if len(names) > MAX_TARGET_MODULES:
        raise ConfigError(f"target_modules lists {len(names)} names, at most {MAX_TARGET_MODULES}")
    for name in names:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise ConfigError(
                f"target_modules entry {name!r} is neither a preset {sorted(TARGET_PRESETS)} "
                "nor a module name"
            )
    return names


def _expand(path: Path | str) -> Path:
    """``~`` means the home directory in every path option (a literal ``~`` dir helps nobody)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~user naming no user: left as is, refused where it is used
        return Path(path)


def _enum(kind: type[E], value: object, name: str) -> E:
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value))
    except ValueError:
        raise ConfigError(
            f"{name} must be one of {[member.value for member in kind]}, got {value!r}"
        ) from None


def _int_in(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


def _float_in(name: str, value: object, low: float, high: float) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and low <= value <= high
    )
    if not ok:
        raise ConfigError(f"{name} must be a number in [{low}, {high}], got {value!r}")
