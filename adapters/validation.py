"""Preflight checks of an adapter before it is registered.

:class:`AdapterValidator` runs every check that can be made without the engine, cheapest
first, and raises at the first failure. Each failure is an :class:`adapters.errors.AdapterError`
whose ``code`` names the check and whose message names the bad value and the fix:

    invalid_name, name_is_base_model          INVALID    the name becomes an OpenAI model id
    path_not_absolute                         INVALID
    path_outside_roots                        FORBIDDEN  after resolving symlinks and ``..``
    missing_directory, missing_config,
    missing_weights, invalid_config,
    invalid_weights, invalid_manifest         INVALID
    pickle_weights                            INVALID    safetensors only
    not_lora, unsupported_feature             INVALID    peft_type must be LORA; what vLLM refuses
    rank_exceeds_max                          INVALID    names the setting to raise
    adapter_too_large                         TOO_LARGE  weights over max_adapter_bytes
    no_lora_tensors, tensor_shape_mismatch    INVALID    shapes must agree with r and the base
    target_modules_missing                    INVALID    a target the base model does not have
    base_model_mismatch                       INVALID    see :meth:`BaseModelIdentity.matches`

The "same name, different content" rule (409) needs the registry and lives in the lifecycle.
Called by the gateway's adapter lifecycle (in a worker thread: hashing is I/O).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from adapters.contract import ADAPTER_CONFIG, NAME_RULE, VLLM_LORA_RANKS, is_valid_name
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.layout import (
    BASE_CONFIG,
    AdapterLayout,
    BaseModelLayout,
    LayoutError,
    read_adapter,
    read_base_model,
    with_sha256,
)

logger = logging.getLogger(__name__)

#: modules_to_save vLLM accepts (classification heads); anything else it refuses to load.
_VLLM_MODULES_TO_SAVE = {"classifier", "score"}


def _fail(check: str, message: str, *, param: str | None = None) -> AdapterError:
    return AdapterError(AdapterErrorKind.INVALID, message, code=check, param=param)


def validate_name(name: str, *, base_model: str) -> None:
    """The name is the public model id and part of the upstream LoRA name ``NAME@vN``."""
    if not is_valid_name(name):
        raise _fail(
            "invalid_name",
            f"invalid adapter name {name[:80]!r}: use {NAME_RULE}",
            param="name",
        )
    if name == base_model:
        raise _fail(
            "name_is_base_model",
            f"adapter name {name!r} is the base model's id; choose another name",
            param="name",
        )


def _normalize_model_name(value: str) -> str:
    """``HuggingFaceTB/SmolLM2-135M-Instruct`` and ``/data/models/smollm2-135m-instruct/`` both
    become ``smollm2-135m-instruct``: the last path component, lower-cased."""
    return PurePosixPath(value.strip().rstrip("/\\").replace("\\", "/")).name.lower()


@dataclass(frozen=True, slots=True)
class BaseModelIdentity:
    """What the engine's base model is called and, when its directory is local, its shapes.

    Identity rule (:meth:`matches`): when the trainer's manifest records the sha256 of the
    base's config.json and the base directory is local, the two hashes decide (a re-built or
    different base has another config). Otherwise the adapter's claimed base (manifest name,
    else PEFT's ``base_model_name_or_path``) is compared by its last path component,
    case-insensitively, with every name the base goes by: the served name, the directory's
    name and the ``_name_or_path`` in its config.json. A hub id and a local copy of that model
    thus match, while a different model does not. An adapter that claims no base is accepted by
    identity; the structural checks (target modules and tensor shapes against the base's
    weights) still apply, and they catch an adapter made for a model of another shape.
    """

    served_name: str
    layout: BaseModelLayout | None = None

    @property
    def names(self) -> frozenset[str]:
        names = {_normalize_model_name(self.served_name)}
        if self.layout is not None:
            names.add(_normalize_model_name(str(self.layout.path)))
            if self.layout.name_or_path:
                names.add(_normalize_model_name(self.layout.name_or_path))
        return frozenset(name for name in names if name)

    def matches(self, adapter: AdapterLayout) -> tuple[bool, str]:
        """(ok, what the adapter claims) for the identity rule above."""
        manifest_name, manifest_config_sha = adapter.manifest_base()
        if manifest_config_sha is not None and self.layout is not None:
            claimed = (
                f"{manifest_name or 'a base'} with config.json sha256 {manifest_config_sha[:12]}"
            )
            return manifest_config_sha == self.layout.config_sha256, claimed
        claimed_name = manifest_name or adapter.base_model_name_or_path
        if not claimed_name:
            return True, "no base model"
        return _normalize_model_name(claimed_name) in self.names, claimed_name


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_lora_rank: int
    max_adapter_bytes: int
    allowed_roots: tuple[Path, ...]


class AdapterValidator:
    """Runs the preflight checks for one engine base model and one set of limits.

    ``base_dir`` is read lazily (a managed engine may still be preparing its base model when
    the gateway starts); without it, the checks against the base's modules are skipped and
    the identity is checked by name only.
    """

    def __init__(
        self, served_name: str, limits: ValidationLimits, *, base_dir: Path | None = None
    ) -> None:
        self.served_name = served_name
        self.limits = limits
        self.base_dir = base_dir
        self._base_layout: BaseModelLayout | None = None

    @property
    def base(self) -> BaseModelIdentity:
        if (
            self._base_layout is None
            and self.base_dir is not None
            and (self.base_dir / BASE_CONFIG).is_file()
        ):
            try:
                self._base_layout = read_base_model(self.base_dir)
            except LayoutError as exc:
                logger.warning(
                    "base model %s is unreadable, adapters are checked by name only: %s",
                    self.base_dir,
                    exc.message,
                )
        return BaseModelIdentity(self.served_name, self._base_layout)

    def validate(self, name: str, path: str | Path) -> AdapterLayout:
        """Every check; returns the adapter's layout with its weights sha256 filled in."""
        validate_name(name, base_model=self.served_name)
        return self.validate_files(self.check_path(path))

    def validate_files(self, directory: Path) -> AdapterLayout:
        """The checks of an adapter directory's files (not of its name or where it lies)."""
        try:
            layout = read_adapter(directory)
        except LayoutError as exc:
            raise _fail(exc.check, exc.message) from exc
        base = self.base
        self._check_config(layout)
        self._check_size(layout)
        self._check_tensors(layout, base)
        self._check_base(layout, base)
        return with_sha256(layout)

    def check_path(self, path: str | Path) -> Path:
        raw = Path(path).expanduser()
        if not raw.is_absolute():
            raise _fail(
                "path_not_absolute",
                f"adapter path {str(path)[:200]!r} must be absolute (it is read by the gateway "
                "and the engine, not relative to the caller)",
                param="path",
            )
        resolved = raw.resolve()
        roots = self.limits.allowed_roots
        if not any(resolved.is_relative_to(root) for root in roots):
            allowed = ", ".join(str(root) for root in roots) or "(none)"
            raise AdapterError(
                AdapterErrorKind.FORBIDDEN,
                f"adapter path {raw} resolves to {resolved}, outside the allowed adapter roots "
                f"({allowed}); move it there or add a root with LORA_GATEWAY_ADAPTER_ROOTS",
                code="path_outside_roots",
                param="path",
            )
        for member in resolved.glob("*") if resolved.is_dir() else ():
            target = member.resolve()
            if member.is_symlink() and not any(target.is_relative_to(r) for r in roots):
                raise AdapterError(
                    AdapterErrorKind.FORBIDDEN,
                    f"{member} is a symlink to {target}, outside the allowed adapter roots",
                    code="path_outside_roots",
                    param="path",
                )
        return resolved

    def _check_config(self, layout: AdapterLayout) -> None:
        if layout.peft_type.upper() != "LORA":
            raise _fail(
                "not_lora",
                f"{ADAPTER_CONFIG} has peft_type={layout.peft_type!r}; "
                "only LoRA adapters (peft_type LORA) can be served",
            )
        config = layout.config
        problems = []
        if layout.use_dora:
            problems.append(
                "use_dora=true (vLLM cannot serve DoRA; merge it into the base or train plain LoRA)"
            )
        if config.get("bias", "none") != "none":
            problems.append(f"bias={config.get('bias')!r} (vLLM needs bias='none')")
        if config.get("lora_bias"):
            problems.append("lora_bias=true (unsupported by vLLM)")
        to_save = config.get("modules_to_save") or []
        if isinstance(to_save, list) and set(map(str, to_save)) - _VLLM_MODULES_TO_SAVE:
            problems.append(f"modules_to_save={to_save!r} (vLLM cannot load full modules)")
        if config.get("layer_replication"):
            problems.append("layer_replication (unsupported by vLLM)")
        if problems:
            raise _fail(
                "unsupported_feature",
                "adapter uses features the engine cannot serve: " + "; ".join(problems),
            )
        rank = layout.max_rank
        if rank > self.limits.max_lora_rank:
            needed = next((r for r in VLLM_LORA_RANKS if r >= rank), rank)
            raise _fail(
                "rank_exceeds_max",
                f"adapter rank {rank} exceeds the engine's max LoRA rank "
                f"{self.limits.max_lora_rank}; raise --max-lora-rank / "
                f"LORA_GATEWAY_MAX_LORA_RANK to {needed}",
            )

    def _check_size(self, layout: AdapterLayout) -> None:
        if layout.weights_size > self.limits.max_adapter_bytes:
            raise AdapterError(
                AdapterErrorKind.TOO_LARGE,
                f"adapter weights are {layout.weights_size} bytes, over the limit of "
                f"{self.limits.max_adapter_bytes} (LORA_GATEWAY_MAX_ADAPTER_BYTES)",
                code="adapter_too_large",
                param="path",
            )

    def _check_tensors(self, layout: AdapterLayout, base: BaseModelIdentity) -> None:
        modules = layout.lora_modules()
        if not modules:
            raise _fail(
                "no_lora_tensors", f"{layout.weights_path.name} holds no lora_A/lora_B tensors"
            )
        base_modules = base.layout.modules if base.layout is not None else None
        for module in modules:
            rank = layout.rank_for(module.module)
            if module.a_shape is None or module.b_shape is None:
                raise _fail(
                    "tensor_shape_mismatch",
                    f"module {module.module} has only one of lora_A / lora_B",
                )
            if len(module.a_shape) != 2 or len(module.b_shape) != 2:
                raise _fail(
                    "tensor_shape_mismatch",
                    f"module {module.module}: LoRA tensors must be 2-D, got "
                    f"{module.a_shape} and {module.b_shape}",
                )
            if module.a_shape[0] != rank or module.b_shape[1] != rank:
                raise _fail(
                    "tensor_shape_mismatch",
                    f"module {module.module}: lora_A {module.a_shape} / lora_B "
                    f"{module.b_shape} do not match rank r={rank} of {ADAPTER_CONFIG}",
                )
            if base_modules is None:
                continue
            base_shape = base_modules.get(module.module)
            if base_shape is None:
                raise _fail(
                    "target_modules_missing",
                    f"adapter weights target {module.module}, which the base model "
                    f"{self.served_name} does not have",
                )
            # Linear weight is (out, in): A is (r, in), B is (out, r). An embedding weight is
            # (vocab, dim): lora_embedding_A is (r, vocab), lora_embedding_B is (dim, r).
            want_in, want_out = (
                (base_shape[0], base_shape[-1])
                if module.embedding
                else (base_shape[-1], base_shape[0])
            )
            if module.a_shape[1] != want_in or module.b_shape[0] != want_out:
                raise _fail(
                    "tensor_shape_mismatch",
                    f"module {module.module}: adapter maps {module.a_shape[1]} -> "
                    f"{module.b_shape[0]} features but the base module is "
                    f"{want_in} -> {want_out}; it was trained for another base model",
                )
        if base_modules is not None:
            self._check_targets(layout, base_modules)

    def _check_targets(
        self, layout: AdapterLayout, base_modules: dict[str, tuple[int, ...]]
    ) -> None:
        targets = layout.target_modules
        if isinstance(targets, str):
            if targets == "all-linear":
                return
            try:
                pattern = re.compile(targets)
            except re.error as exc:
                raise _fail("invalid_config", f"target_modules regex {targets!r}: {exc}") from exc
            if not any(pattern.fullmatch(name) for name in base_modules):
                raise _fail(
                    "target_modules_missing",
                    f"target_modules regex {targets!r} matches no module of the base "
                    f"model {self.served_name}",
                )
            return
        leaf_names = {name.rsplit(".", 1)[-1] for name in base_modules}
        missing = [
            t
            for t in targets
            if t not in leaf_names
            and not any(name == t or name.endswith("." + t) for name in base_modules)
        ]
        if missing:
            known = ", ".join(sorted(leaf_names)[:20])
            raise _fail(
                "target_modules_missing",
                f"target_modules {missing} are not modules of the base model "
                f"{self.served_name} (it has: {known})",
            )

    def _check_base(self, layout: AdapterLayout, base: BaseModelIdentity) -> None:
        ok, claimed = base.matches(layout)
        if not ok:
            raise _fail(
                "base_model_mismatch",
                f"adapter was trained on {claimed!r}, but the engine serves "
                f"{self.served_name!r}; register it with a gateway serving that "
                "base model",
            )
