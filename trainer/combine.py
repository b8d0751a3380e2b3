"""Combine LoRA adapters into one with PEFT's ``add_weighted_adapter``.

    lora-trainer combine A B [C...] --weights 0.7,0.3 --method cat --output DIR [--register URL]

Called by ``lora-trainer combine`` (:mod:`trainer.cli`) and tests. Two steps:

1. :func:`plan_combine` (no torch, nothing loaded): each parent is read with
   :func:`adapters.layout.read_adapter` and must be a plain LoRA adapter (no DoRA, rsLoRA, bias,
   per-module ranks or full modules), trained on the same base model (the gateway's own identity
   rule, :class:`adapters.validation.BaseModelIdentity`) and adapting the same modules. One
   finite weight per parent. The result's rank is predicted (``linear``, ``ties``,
   ``dare_linear``: the parents' common rank, which PEFT requires; ``cat``: the sum of the
   ranks; ``svd``: ``svd_rank`` or the largest rank) and refused unless vLLM serves it (one
   of :data:`adapters.contract.VLLM_LORA_RANKS`, at most ``max_rank``), before a minute is
   spent loading models.
2. :func:`combine`: the base (float32, CPU) with every parent loaded as a PEFT adapter,
   ``add_weighted_adapter`` into the adapter ``default``, saved as safetensors. The result is
   checked before it is published: its rank and adapted modules are the predicted ones and the
   gateway's preflight (:class:`adapters.validation.AdapterValidator`) accepts it for the base.
   It is written beside ``output`` and swapped in whole (:mod:`trainer.output`) with a
   ``manifest.json`` naming its parents (path, name, sha256 of the weights, rank, alpha), the
   weights, the method and its knobs.

What the methods compute, per adapted module with ``delta_i = scale_i * B_i @ A_i``:
``cat`` and ``svd`` (with ``svd_rank`` at least the sum of the ranks) are exactly
``sum(w_i * delta_i)``; ``svd`` with a smaller rank is its best approximation of that rank;
``linear`` mixes A and B separately (cheap, approximate); ``ties`` and ``dare_linear`` prune
to ``density`` first (DARE at random: ``seed`` makes it repeatable).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from adapters.contract import NAME_RULE, VLLM_LORA_RANKS, is_valid_name
from adapters.errors import AdapterError
from adapters.layout import AdapterLayout, LayoutError, read_adapter, read_base_model, with_sha256
from adapters.sampling import SamplingDefaultsError, validate_sampling_defaults
from adapters.validation import AdapterValidator, BaseModelIdentity, ValidationLimits
from trainer.config import ConfigError
from trainer.manifest import (
    MANIFEST_VERSION,
    base_model_identity,
    library_versions,
    with_sampling_defaults,
    write_manifest,
)
from trainer.models import check_model_dir
from trainer.output import checked_output, publish

MIN_PARENTS, MAX_PARENTS = 2, 8
MAX_ABS_WEIGHT = 10.0
DEFAULT_DENSITY = 0.5
COMBINED = "default"  # PEFT saves the adapter named "default" at the top of the directory


class CombineMethod(StrEnum):
    LINEAR = "linear"
    CAT = "cat"
    SVD = "svd"
    TIES = "ties"
    DARE_LINEAR = "dare_linear"


_SAME_RANK_METHODS = (CombineMethod.LINEAR, CombineMethod.TIES, CombineMethod.DARE_LINEAR)
_DENSITY_METHODS = (CombineMethod.TIES, CombineMethod.DARE_LINEAR)


class CombineError(ConfigError):
    """The adapters cannot be combined as asked; the message names the adapter and the rule."""


@dataclass(frozen=True)
class Parent:
    """One input adapter, read and hashed."""

    name: str
    layout: AdapterLayout

    @property
    def modules(self) -> frozenset[str]:
        return frozenset(module.module for module in self.layout.lora_modules())


@dataclass(frozen=True)
class CombinePlan:
    """Everything checked before any model is loaded."""

    parents: tuple[Parent, ...]
    weights: tuple[float, ...]
    method: CombineMethod
    base_model: Path
    output: Path
    name: str
    rank: int
    modules: frozenset[str]
    density: float | None
    svd_rank: int | None
    seed: int
    max_rank: int
    sampling_defaults: dict[str, Any] | None


def plan_combine(
    adapters: Sequence[Path],
    weights: Sequence[float],
    method: CombineMethod | str,
    *,
    output: Path,
    base_model: Path | None = None,
    name: str | None = None,
    svd_rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    max_rank: int = max(VLLM_LORA_RANKS),
    overwrite: bool = False,
    sampling_defaults: dict[str, Any] | None = None,
) -> CombinePlan:
    """Check the request against the parents and the engine's limits; load nothing."""
    try:
        method = CombineMethod(str(method))
    except ValueError:
        raise CombineError(
            f"method must be one of {[m.value for m in CombineMethod]}, got {method!r}"
        ) from None
    if not MIN_PARENTS <= len(adapters) <= MAX_PARENTS:
        raise CombineError(
            f"combine takes {MIN_PARENTS} to {MAX_PARENTS} adapters, got {len(adapters)}"
        )
    weights = _checked_weights(weights, len(adapters))
    out = checked_output(output, overwrite=overwrite)
    name = name or out.name
    if not is_valid_name(name):
        raise CombineError(f"name must be {NAME_RULE}, got {name[:80]!r}")
    if max_rank not in VLLM_LORA_RANKS:
        raise CombineError(f"max rank must be one of {VLLM_LORA_RANKS}, got {max_rank}")

    parents = tuple(_read_parent(Path(path)) for path in adapters)
    if len({parent.layout.path for parent in parents}) != len(parents):
        raise CombineError("the same adapter is given twice; give its weight once")
    base = check_model_dir(base_model or _claimed_base(parents[0]))
    _check_same_base(parents, base)
    modules = _check_same_modules(parents)
    rank = _result_rank(parents, method, svd_rank)
    if rank not in VLLM_LORA_RANKS or rank > max_rank:
        ranks = " + ".join(str(parent.layout.r) for parent in parents)
        raise CombineError(
            f"{method} gives rank {rank} ({ranks} for cat), which the engine cannot serve: "
            f"vLLM takes ranks {tuple(r for r in VLLM_LORA_RANKS if r <= max_rank)}; use "
            f"--method svd --svd-rank R with one of them"
        )
    if density is not None and method not in _DENSITY_METHODS:
        raise CombineError(f"--density applies to ties and dare_linear, not {method}")
    if method in _DENSITY_METHODS:
        density = DEFAULT_DENSITY if density is None else density
        if not (isinstance(density, float | int) and 0.0 < density <= 1.0):
            raise CombineError(f"density must be a number in (0, 1], got {density!r}")
    if not 0 <= seed < 2**32:
        raise CombineError(f"seed must be in [0, 2**32), got {seed}")
    try:
        sampling_defaults = validate_sampling_defaults(sampling_defaults or {}) or None
    except SamplingDefaultsError as exc:
        raise CombineError(str(exc)) from None
    return CombinePlan(
        parents=parents,
        weights=weights,
        method=method,
        base_model=base,
        output=out,
        name=name,
        rank=rank,
        modules=modules,
        density=None if density is None else float(density),
        svd_rank=rank if method is CombineMethod.SVD else None,
        seed=seed,
        max_rank=max_rank,
        sampling_defaults=sampling_defaults,
    )


def combine(adapters: Sequence[Path], weights: Sequence[float], method: str, **kw: Any) -> Path:
    """Plan (see :func:`plan_combine` for the keywords), combine, check, publish; the output."""
    return combine_planned(plan_combine(adapters, weights, method, **kw))


def combine_planned(plan: CombinePlan) -> Path:
    started = time.perf_counter()
    model = _weighted_model(plan)

    def write(staging: Path) -> None:
        model.save_pretrained(str(staging), selected_adapters=[COMBINED], safe_serialization=True)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
        _check_result(plan, staging)
        write_manifest(staging, _manifest(plan, time.perf_counter() - started))

    return publish(plan.output, write)


# --- planning ------------------------------------------------------------------------------------


def _checked_weights(weights: Sequence[float], count: int) -> tuple[float, ...]:
    if len(weights) != count:
        raise CombineError(f"--weights gives {len(weights)} weights for {count} adapters")
    for weight in weights:
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or abs(weight) > MAX_ABS_WEIGHT
        ):
            raise CombineError(
                f"each weight must be a number in [-{MAX_ABS_WEIGHT:g}, {MAX_ABS_WEIGHT:g}], "
                f"got {weight!r}"
            )
    if not any(weights):
        raise CombineError("the weights are all zero: the result would be the base model")
    return tuple(float(weight) for weight in weights)


def _read_parent(path: Path) -> Parent:
    try:
        layout = with_sha256(read_adapter(path.expanduser()))
    except LayoutError as exc:
        raise CombineError(f"adapter {str(path)!r}: {exc.message}") from None
    manifest_name = (layout.manifest or {}).get("adapter_name")
    name = manifest_name if isinstance(manifest_name, str) else layout.path.name
    config = layout.config
    problems = []
    if layout.peft_type.upper() != "LORA":
        problems.append(f"peft_type is {layout.peft_type!r}, not LORA")
    if layout.use_dora:
        problems.append("it is a DoRA adapter (vLLM serves plain LoRA)")
    if config.get("use_rslora"):
        problems.append("it uses rsLoRA scaling")
    if layout.rank_pattern or config.get("alpha_pattern"):
        problems.append("it has per-module ranks or alphas (rank_pattern / alpha_pattern)")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        problems.append("it trains biases")
    if config.get("modules_to_save"):
        problems.append("it saves full modules (modules_to_save)")
    if not layout.lora_modules():
        problems.append("its weights hold no lora_A/lora_B tensors")
    if problems:
        raise CombineError(f"adapter {str(path)!r} cannot be combined: {'; '.join(problems)}")
    return Parent(name=name, layout=layout)


def _claimed_base(parent: Parent) -> Path:
    base = parent.layout.base_model_name_or_path
    if not base:
        raise CombineError(f"adapter {parent.name!r} names no base model; pass --base-model")
    return Path(base)


def _check_same_base(parents: Sequence[Parent], base: Path) -> None:
    try:
        identity = BaseModelIdentity(served_name=base.name, layout=read_base_model(base))
    except LayoutError as exc:
        raise CombineError(f"base model {str(base)!r}: {exc.message}") from None
    for parent in parents:
        ok, claimed = identity.matches(parent.layout)
        if not ok:
            raise CombineError(
                f"adapter {parent.name!r} was trained on {claimed!r}, not on the base model "
                f"{str(base)!r}: only adapters of one base model can be combined"
            )


def _check_same_modules(parents: Sequence[Parent]) -> frozenset[str]:
    first = parents[0]
    for parent in parents[1:]:
        if parent.modules != first.modules:
            only_first = sorted(first.modules - parent.modules)[:5]
            only_other = sorted(parent.modules - first.modules)[:5]
            raise CombineError(
                f"adapters {first.name!r} and {parent.name!r} adapt different modules "
                f"(only {first.name!r}: {only_first}; only {parent.name!r}: {only_other}); "
                "combine adapters trained with the same --target-modules"
            )
    return first.modules


def _result_rank(parents: Sequence[Parent], method: CombineMethod, svd_rank: int | None) -> int:
    ranks = [parent.layout.r for parent in parents]
    if svd_rank is not None and method is not CombineMethod.SVD:
        raise CombineError(f"--svd-rank applies to --method svd, not {method}")
    if method in _SAME_RANK_METHODS:
        if len(set(ranks)) != 1:
            raise CombineError(
                f"{method} needs adapters of one rank, got ranks {ranks}; use --method cat "
                "or --method svd"
            )
        return ranks[0]
    if method is CombineMethod.CAT:
        return sum(ranks)
    if svd_rank is not None and (isinstance(svd_rank, bool) or svd_rank not in VLLM_LORA_RANKS):
        raise CombineError(f"--svd-rank must be one of {VLLM_LORA_RANKS}, got {svd_rank!r}")
    return svd_rank or max(ranks)


# --- combining -----------------------------------------------------------------------------------


def _weighted_model(plan: CombinePlan) -> Any:
    """The base with every parent and the weighted combination ``default`` loaded (PEFT)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        str(plan.base_model), dtype=torch.float32, device_map="cpu"
    )
    names = [f"parent{i}" for i in range(len(plan.parents))]
    model = PeftModel.from_pretrained(base, str(plan.parents[0].layout.path), adapter_name=names[0])
    for name, parent in zip(names[1:], plan.parents[1:], strict=True):
        model.load_adapter(str(parent.layout.path), adapter_name=name)
    options: dict[str, Any] = {}
    if plan.method is CombineMethod.SVD:
        options["svd_rank"] = plan.svd_rank
    if plan.density is not None:
        options["density"] = plan.density
    torch.manual_seed(plan.seed)  # DARE drops at random
    model.add_weighted_adapter(
        names, list(plan.weights), COMBINED, combination_type=plan.method.value, **options
    )
    model.set_adapter(COMBINED)
    return model.eval()


def _check_result(plan: CombinePlan, directory: Path) -> None:
    """The written adapter is what was planned and what the gateway accepts."""
    try:
        result = read_adapter(directory)
    except LayoutError as exc:
        raise CombineError(f"the combined adapter is unreadable: {exc.message}") from None
    adapted = frozenset(module.module for module in result.lora_modules())
    if result.max_rank != plan.rank or adapted != plan.modules:
        raise CombineError(
            f"the combined adapter has rank {result.max_rank} on {len(adapted)} modules, "
            f"expected rank {plan.rank} on {len(plan.modules)}"
        )
    validator = AdapterValidator(
        plan.base_model.name,
        ValidationLimits(
            max_lora_rank=plan.max_rank,
            max_adapter_bytes=1 << 62,  # the gateway's own size limit applies at registration
            allowed_roots=(directory.parent,),
        ),
        base_dir=plan.base_model,
    )
    try:
        validator.validate(plan.name, directory)
    except AdapterError as exc:
        raise CombineError(
            f"the gateway would refuse the combined adapter: {exc.message}"
        ) from None


def _manifest(plan: CombinePlan, wall_time_s: float) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "adapter_name": plan.name,
        "method": "combine",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "combine": {
            "method": plan.method.value,
            "weights": list(plan.weights),
            "density": plan.density,
            "svd_rank": plan.svd_rank,
            "seed": plan.seed,
            "rank": plan.rank,
            "parents": [
                {
                    "name": parent.name,
                    "path": str(parent.layout.path),
                    "weights_sha256": parent.layout.sha256,
                    "rank": parent.layout.r,
                    "lora_alpha": parent.layout.lora_alpha,
                    "method": (parent.layout.manifest or {}).get("method"),
                }
                for parent in plan.parents
            ],
            "wall_time_s": round(wall_time_s, 3),
        },
        "config": {
            "rank": plan.rank,
            "alpha": plan.rank,  # PEFT folds each parent's scale into the combined weights
            "target_modules_resolved": sorted({m.rsplit(".", 1)[-1] for m in plan.modules}),
            "adapter_name": plan.name,
        },
        "base_model": base_model_identity(plan.base_model),
        "versions": library_versions(),
    }
    return with_sampling_defaults(manifest, plan.sampling_defaults)
