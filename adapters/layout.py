"""Reading an adapter directory and a base model directory, without torch.

The names of the files and manifest keys are the contract, :mod:`adapters.contract`.
Reading an adapter directory gives an :class:`AdapterLayout`, a frozen summary of what the
files claim: the safetensors header is parsed with ``struct`` + ``json`` and the weights are
hashed in a streaming pass, so nothing here imports torch or numpy. :func:`read_base_model`
reads a base model directory (``config.json`` + safetensors, sharded or not) into the module
names and shapes that :mod:`adapters.validation` checks adapters against.

Called by :mod:`adapters.validation` (preflight checks) and, through it, by the adapter
lifecycle at registration. Raises :class:`LayoutError`, an
:class:`adapters.errors.AdapterError` of kind INVALID.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adapters.contract import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MANIFEST,
    MANIFEST_BASE_CONFIG_SHA256,
    MANIFEST_BASE_MODEL,
    MANIFEST_BASE_NAME,
    PICKLE_WEIGHTS,
    PICKLE_WEIGHTS_PT,
)
from adapters.errors import AdapterError, AdapterErrorKind

BASE_CONFIG = "config.json"
BASE_WEIGHTS = "model.safetensors"
BASE_WEIGHTS_INDEX = "model.safetensors.index.json"

#: safetensors caps its JSON header at 100 MB; so do we, before allocating it.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
MAX_JSON_FILE_BYTES = 1 << 20
_HASH_CHUNK = 1 << 20
_PEFT_PREFIX = "base_model.model."
_LORA_TENSOR = re.compile(
    r"^(?P<module>.+)\.(?P<kind>lora_A|lora_B|lora_embedding_A|"
    r"lora_embedding_B|lora_magnitude_vector)(?:\.[^.]+)?(?:\.weight)?$"
)


class LayoutError(AdapterError):
    """A file of the contract is missing or unreadable; ``check`` (the ``code``) names which
    rule failed. Always of kind INVALID."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(AdapterErrorKind.INVALID, message, code=check)
        self.check = check


@dataclass(frozen=True, slots=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class LoraModule:
    """The LoRA pair of one adapted base module, as named in the base (``model.layers.0...``)."""

    module: str
    a_shape: tuple[int, ...] | None
    b_shape: tuple[int, ...] | None
    embedding: bool = False


@dataclass(frozen=True, slots=True)
class AdapterLayout:
    """What an adapter directory contains and claims; paths are resolved (symlinks followed)."""

    path: Path
    peft_type: str
    r: int
    lora_alpha: float
    target_modules: tuple[str, ...] | str
    base_model_name_or_path: str | None
    use_dora: bool
    rank_pattern: dict[str, int]
    config: dict[str, Any]
    config_sha256: str
    weights_path: Path
    weights_size: int
    tensors: dict[str, TensorInfo]
    manifest: dict[str, Any] | None
    sha256: str = ""
    #: For a copy in :mod:`adapters.store`: the directory it was copied from.
    source_path: Path | None = None

    def same_content(self, other: AdapterLayout) -> bool:
        """Same weights and config bytes (both layouts hashed with :func:`with_sha256`)."""
        return bool(self.sha256) and (self.sha256, self.config_sha256) == (
            other.sha256,
            other.config_sha256,
        )

    @property
    def max_rank(self) -> int:
        return max([self.r, *self.rank_pattern.values()])

    def lora_modules(self) -> list[LoraModule]:
        """Group the tensors by adapted module (PEFT's ``base_model.model.`` prefix removed)."""
        pairs: dict[str, dict[str, tuple[int, ...]]] = {}
        embedding: set[str] = set()
        for tensor_name, info in self.tensors.items():
            match = _LORA_TENSOR.match(tensor_name.removeprefix(_PEFT_PREFIX))
            if match is None:
                continue
            module, kind = match.group("module"), match.group("kind")
            if kind == "lora_magnitude_vector":
                continue
            if kind.startswith("lora_embedding"):
                embedding.add(module)
            pairs.setdefault(module, {})[kind[-1]] = info.shape
        return [
            LoraModule(module, shapes.get("A"), shapes.get("B"), module in embedding)
            for module, shapes in sorted(pairs.items())
        ]

    def rank_for(self, module: str) -> int:
        """PEFT's rule: the first ``rank_pattern`` key that matches a dotted suffix wins."""
        for key, rank in self.rank_pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return rank
        return self.r

    def manifest_base(self) -> tuple[str | None, str | None]:
        """(base name, sha256 of the base's config.json) recorded by the trainer, if any."""
        if not self.manifest:
            return None, None
        base = self.manifest.get(MANIFEST_BASE_MODEL)
        if isinstance(base, str):
            return base, None
        if isinstance(base, dict):
            name = base.get(MANIFEST_BASE_NAME)
            config_sha256 = base.get(MANIFEST_BASE_CONFIG_SHA256)
            return (
                name if isinstance(name, str) else None,
                config_sha256 if isinstance(config_sha256, str) else None,
            )
        return None, None


@dataclass(frozen=True, slots=True)
class BaseModelLayout:
    """A base model directory: its identity and its linear modules' weight shapes."""

    path: Path
    config: dict[str, Any]
    config_sha256: str
    #: ``model.layers.0.self_attn.q_proj`` -> shape of its ``.weight`` (out, in).
    modules: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def name_or_path(self) -> str | None:
        value = self.config.get("_name_or_path")
        return value if isinstance(value, str) and value else None


def read_json(path: Path, *, check: str, limit: int = MAX_JSON_FILE_BYTES) -> dict[str, Any]:
    """A small JSON object file; LayoutError(check) when absent, too big or not an object."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise LayoutError(check, f"{path} is {size} bytes; at most {limit} are read")
        payload = json.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise LayoutError(check, f"{path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise LayoutError(check, f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise LayoutError(check, f"{path} must hold a JSON object, not {type(payload).__name__}")
    return payload


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes from a safetensors file's header (no tensor data read).

    Format: 8 bytes little-endian header length N, N bytes of JSON, then the data buffer. Each
    entry's ``data_offsets`` must fit the file, or the file is truncated or forged.
    """
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise LayoutError("invalid_weights", f"{path} is too short for a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > MAX_SAFETENSORS_HEADER:
                raise LayoutError(
                    "invalid_weights",
                    f"{path} declares a {header_len}-byte header (limit "
                    f"{MAX_SAFETENSORS_HEADER}): not a safetensors file",
                )
            raw = handle.read(header_len)
            data_len = path.stat().st_size - 8 - header_len
    except OSError as exc:
        raise LayoutError("invalid_weights", f"cannot read {path}: {exc}") from exc
    if len(raw) != header_len:
        raise LayoutError("invalid_weights", f"{path} ends inside its safetensors header")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise LayoutError("invalid_weights", f"{path} has a corrupt safetensors header") from exc
    if not isinstance(header, dict):
        raise LayoutError("invalid_weights", f"{path} has a corrupt safetensors header")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            valid = (
                isinstance(dtype, str)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and 0 <= start <= end <= data_len
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LayoutError("invalid_weights", f"{path}: bad header entry {name!r}") from exc
        if not valid:
            raise LayoutError(
                "invalid_weights", f"{path}: tensor {name!r} lies outside the file (truncated?)"
            )
        tensors[name] = TensorInfo(dtype=dtype, shape=tuple(shape))
    return tensors


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_adapter(path: Path) -> AdapterLayout:
    """Read an adapter directory's config, weights header and manifest; no hashing yet.

    Use :func:`with_sha256` to add the weights hash once cheaper checks have passed.
    """
    directory = path.resolve()
    if not directory.is_dir():
        raise LayoutError("missing_directory", f"adapter directory {path} does not exist")
    config_path = directory / ADAPTER_CONFIG
    if not config_path.is_file():
        raise LayoutError("missing_config", f"{path} has no {ADAPTER_CONFIG}: not a PEFT adapter")
    config = read_json(config_path, check="invalid_config")
    weights = directory / ADAPTER_WEIGHTS
    if not weights.is_file():
        for pickle_name in (PICKLE_WEIGHTS, PICKLE_WEIGHTS_PT):
            if (directory / pickle_name).is_file():
                raise LayoutError(
                    "pickle_weights",
                    f"{path} holds {pickle_name} (pickle): only {ADAPTER_WEIGHTS} is accepted; "
                    "re-save with save_pretrained(..., safe_serialization=True)",
                )
        raise LayoutError("missing_weights", f"{path} has no {ADAPTER_WEIGHTS}")
    manifest_path = directory / MANIFEST
    manifest = (
        read_json(manifest_path, check="invalid_manifest") if manifest_path.exists() else None
    )

    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise LayoutError(
            "invalid_config", f"{ADAPTER_CONFIG}: r must be a positive integer, got {r!r}"
        )
    alpha = config.get("lora_alpha", r)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise LayoutError(
            "invalid_config", f"{ADAPTER_CONFIG}: lora_alpha must be a number, got {alpha!r}"
        )
    targets = config.get("target_modules")
    target_modules: tuple[str, ...] | str
    if isinstance(targets, str):
        target_modules = targets
    elif isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        target_modules = tuple(targets)
    else:
        raise LayoutError(
            "invalid_config",
            f"{ADAPTER_CONFIG}: target_modules must be a "
            f"non-empty list of names or a regex, got {targets!r}",
        )
    rank_pattern = config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in rank_pattern.values()
    ):
        raise LayoutError(
            "invalid_config",
            f"{ADAPTER_CONFIG}: rank_pattern must map module "
            f"patterns to positive ranks, got {rank_pattern!r}",
        )
    base = config.get("base_model_name_or_path")
    return AdapterLayout(
        path=directory,
        peft_type=str(config.get("peft_type", "")),
        r=r,
        lora_alpha=float(alpha),
        target_modules=target_modules,
        base_model_name_or_path=base if isinstance(base, str) and base else None,
        use_dora=bool(config.get("use_dora", False)),
        rank_pattern={str(k): int(v) for k, v in rank_pattern.items()},
        config=config,
        config_sha256=hashlib.sha256(config_path.read_bytes()).hexdigest(),
        weights_path=weights.resolve(),
        weights_size=weights.stat().st_size,
        tensors=read_safetensors_header(weights),
        manifest=manifest,
    )


def with_sha256(layout: AdapterLayout) -> AdapterLayout:
    """The same layout with the streamed sha256 of its weights file filled in."""
    return replace(layout, sha256=sha256_file(layout.weights_path))


def read_base_model(path: Path) -> BaseModelLayout:
    """A base model directory's config and linear module shapes, from safetensors headers."""
    directory = path.resolve()
    config = read_json(directory / BASE_CONFIG, check="invalid_base_model")
    config_sha256 = hashlib.sha256((directory / BASE_CONFIG).read_bytes()).hexdigest()
    index_path = directory / BASE_WEIGHTS_INDEX
    if index_path.is_file():
        index = read_json(index_path, check="invalid_base_model", limit=64 << 20)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise LayoutError("invalid_base_model", f"{index_path} has no weight_map")
        files = sorted({directory / str(name) for name in weight_map.values()})
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise LayoutError("invalid_base_model", f"{directory} holds no safetensors weights")
    modules: dict[str, tuple[int, ...]] = {}
    for file in files:
        for name, info in read_safetensors_header(file).items():
            if name.endswith(".weight"):
                modules[name.removesuffix(".weight")] = info.shape
    return BaseModelLayout(
        path=directory, config=config, config_sha256=config_sha256, modules=modules
    )
