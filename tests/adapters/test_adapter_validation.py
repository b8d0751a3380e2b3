"""adapters.validation: each preflight failure has its kind, code and a message with the fix."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, PICKLE_WEIGHTS
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.validation import (
    AdapterValidator,
    ValidationLimits,
    validate_name,
)
from tests.adapters.builders import write_adapter, write_base_model

BASE_ID = "tinybase"
INVALID = AdapterErrorKind.INVALID


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    root.mkdir()
    return root


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    return write_base_model(tmp_path / "models" / BASE_ID, name_or_path="Org/TinyBase")


def make_validator(base_dir: Path, roots: Path, **limits: Any) -> AdapterValidator:
    return AdapterValidator(
        BASE_ID,
        ValidationLimits(
            max_lora_rank=limits.get("max_lora_rank", 16),
            max_adapter_bytes=limits.get("max_adapter_bytes", 1 << 30),
            allowed_roots=(roots.resolve(),),
        ),
        base_dir=base_dir,
    )


def failure(call: Callable[[], object]) -> AdapterError:
    with pytest.raises(AdapterError) as caught:
        call()
    return caught.value


def test_valid_adapter_passes_and_is_hashed(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a1", base_model=str(base_dir))
    layout = make_validator(base_dir, roots).validate("a1", directory)
    assert len(layout.sha256) == 64
    assert layout.path == directory.resolve()


@pytest.mark.parametrize(
    "name", ["", "-lead", "has space", "a@v1", "x" * 65, "ünï", "a/b", "a\n", "x" * 64 + "\n"]
)
def test_bad_names(name: str) -> None:
    error = failure(lambda: validate_name(name, base_model=BASE_ID))
    assert (error.kind, error.code, error.param) == (
        AdapterErrorKind.INVALID,
        "invalid_name",
        "name",
    )
    assert "1 to 64 characters" in error.message


def test_name_equal_to_base_is_refused() -> None:
    error = failure(lambda: validate_name(BASE_ID, base_model=BASE_ID))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "name_is_base_model")


def test_relative_path_is_refused(base_dir: Path, roots: Path) -> None:
    error = failure(lambda: make_validator(base_dir, roots).validate("a", "rel/dir"))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "path_not_absolute")


def test_path_outside_roots_dotdot_and_symlinks(
    base_dir: Path, roots: Path, tmp_path: Path
) -> None:
    validator = make_validator(base_dir, roots)
    outside = write_adapter(tmp_path / "elsewhere", base_model=BASE_ID)
    for path in (outside, roots / ".." / "elsewhere"):
        error = failure(lambda p=path: validator.validate("a", p))  # type: ignore[misc]
        assert (error.kind, error.code) == (AdapterErrorKind.FORBIDDEN, "path_outside_roots")
        assert str(roots.resolve()) in error.message
    (roots / "link").symlink_to(outside, target_is_directory=True)
    error = failure(lambda: validator.validate("a", roots / "link"))
    assert (error.kind, error.code) == (AdapterErrorKind.FORBIDDEN, "path_outside_roots")
    # A directory inside the roots whose weights file points outside them.
    inside = roots / "inside"
    inside.mkdir()
    for member in outside.iterdir():
        (inside / member.name).symlink_to(member)
    error = failure(lambda: validator.validate("a", inside))
    assert (error.kind, error.code) == (AdapterErrorKind.FORBIDDEN, "path_outside_roots")
    assert "symlink" in error.message


def _broken(kind: str, directory: Path) -> None:
    config_path = directory / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    if kind == "missing_config":
        config_path.unlink()
    elif kind == "missing_weights":
        (directory / ADAPTER_WEIGHTS).unlink()
    elif kind == "pickle_weights":
        (directory / ADAPTER_WEIGHTS).rename(directory / PICKLE_WEIGHTS)
    elif kind == "invalid_config":
        config_path.write_text("{not json")
    elif kind == "not_lora":
        config_path.write_text(json.dumps({**config, "peft_type": "IA3"}))
    elif kind == "unsupported_feature":
        config_path.write_text(json.dumps({**config, "use_dora": True}))
    elif kind == "invalid_manifest":
        (directory / MANIFEST).write_text("[1, 2]")


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("missing_config", ADAPTER_CONFIG),
        ("missing_weights", ADAPTER_WEIGHTS),
        ("pickle_weights", "safe_serialization=True"),
        ("invalid_config", "not readable JSON"),
        ("not_lora", "'IA3'"),
        ("unsupported_feature", "DoRA"),
        ("invalid_manifest", "JSON object"),
    ],
)
def test_broken_directories(base_dir: Path, roots: Path, kind: str, needle: str) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID)
    _broken(kind, directory)
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, kind)
    assert needle in error.message


def test_missing_directory(base_dir: Path, roots: Path) -> None:
    error = failure(lambda: make_validator(base_dir, roots).validate("a", roots / "nope"))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "missing_directory")


def test_rank_above_max_names_the_setting(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID, r=24)
    error = failure(
        lambda: make_validator(base_dir, roots, max_lora_rank=16).validate("a", directory)
    )
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "rank_exceeds_max")
    assert "LORA_GATEWAY_MAX_LORA_RANK to 32" in error.message
    assert "--max-lora-rank" in error.message


def test_oversize_is_413(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID)
    size = (directory / ADAPTER_WEIGHTS).stat().st_size
    error = failure(
        lambda: make_validator(base_dir, roots, max_adapter_bytes=size - 1).validate("a", directory)
    )
    assert (error.kind, error.code) == (AdapterErrorKind.TOO_LARGE, "adapter_too_large")
    assert str(size) in error.message


def test_target_module_absent_from_base(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID)
    config_path = directory / ADAPTER_CONFIG
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "target_modules": ["q_proj", "qkv_proj"]}))
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "target_modules_missing")
    assert "qkv_proj" in error.message and "q_proj" in error.message


def test_weights_for_a_module_the_base_lacks(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID, layers=3)  # base has 2 layers
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "target_modules_missing")
    assert "model.layers.2." in error.message


def test_shapes_inconsistent_with_rank(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID, r=8)
    config_path = directory / ADAPTER_CONFIG
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "r": 4}))
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "tensor_shape_mismatch")
    assert "r=4" in error.message


def test_shapes_of_another_base(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID, hidden=128)
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "tensor_shape_mismatch")
    assert "another base model" in error.message


@pytest.mark.parametrize(
    ("claimed", "ok"),
    [
        ("Org/TinyBase", True),  # the base config's _name_or_path, as a hub id
        ("/some/where/TINYBASE/", True),  # the served name, as a path
        (None, True),  # no claim: structural checks decide
        ("HuggingFaceTB/SmolLM2-135M", False),
    ],
)
def test_base_model_identity_by_name(
    base_dir: Path, roots: Path, claimed: str | None, ok: bool
) -> None:
    directory = write_adapter(roots / "a", base_model=claimed)
    validator = make_validator(base_dir, roots)
    if ok:
        validator.validate("a", directory)
        return
    error = failure(lambda: validator.validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "base_model_mismatch")
    assert "SmolLM2-135M" in error.message and BASE_ID in error.message


def test_base_model_identity_by_trainer_manifest(base_dir: Path, roots: Path) -> None:
    # The trainer (trainer.manifest.base_model_identity) records the base's config.json hash.
    config_sha = hashlib.sha256((base_dir / "config.json").read_bytes()).hexdigest()
    good = {"base_model": {"name": "renamed-copy", "config_sha256": config_sha}}
    directory = write_adapter(roots / "good", base_model="unrelated/name", manifest=good)
    make_validator(base_dir, roots).validate("good", directory)

    bad = {"base_model": {"name": BASE_ID, "config_sha256": "0" * 64}}
    directory = write_adapter(roots / "bad", base_model=BASE_ID, manifest=bad)
    error = failure(lambda: make_validator(base_dir, roots).validate("bad", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "base_model_mismatch")
    assert "sha256 000000000000" in error.message


def test_unreadable_weights_file_reports_invalid_weights(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID)
    (directory / ADAPTER_WEIGHTS).write_bytes(b"\x00" * 4)
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "invalid_weights")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_config(base_dir: Path, roots: Path) -> None:
    directory = write_adapter(roots / "a", base_model=BASE_ID)
    (directory / ADAPTER_CONFIG).chmod(0)
    error = failure(lambda: make_validator(base_dir, roots).validate("a", directory))
    assert (error.kind, error.code) == (AdapterErrorKind.INVALID, "invalid_config")
