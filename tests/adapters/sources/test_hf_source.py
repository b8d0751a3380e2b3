"""HubSource against a Hub cache laid out as huggingface_hub writes it (blobs, snapshots of
symlinks, refs), with HF_HUB_OFFLINE=1: hf://org/name and hf://org/name@rev fetch the
contract's files from it; what the cache lacks is a clear error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import huggingface_hub.constants
import pytest

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.sources import FetchPolicy, HubSource
from tests.adapters.builders import write_adapter


def cache_snapshot(
    cache: Path, repo_id: str, commit: str, files: dict[str, bytes], *, ref: str | None = "main"
) -> Path:
    """One snapshot in huggingface_hub's cache layout:
    ``models--ORG--NAME/{blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/<ref>}``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("../..") / "blobs" / blob.name)
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def adapter_files(tmp_path: Path, seed: int, *, manifest: bool = True) -> dict[str, bytes]:
    directory = write_adapter(
        tmp_path / f"a{seed}",
        base_model="tinybase",
        seed=seed,
        manifest={"adapter_name": "x"} if manifest else None,
    )
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def fetch(cache: Path, url: str, staging: Path, limit: int = 1 << 20) -> dict[str, bytes]:
    staging.mkdir()
    got = HubSource(cache_dir=cache).fetch(
        url, staging, FetchPolicy(max_adapter_bytes=limit).start(), lambda d, t: None
    )
    assert got == staging
    return {p.name: p.read_bytes() for p in staging.iterdir() if not p.is_symlink()}


def test_main_and_a_pinned_revision_from_the_offline_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    old, new = adapter_files(tmp_path, 1), adapter_files(tmp_path, 2, manifest=False)
    old_commit, new_commit = "a" * 40, "b" * 40
    cache_snapshot(cache, "org/name", old_commit, old, ref=None)
    cache_snapshot(cache, "org/name", new_commit, new, ref="main")
    cache_snapshot(cache, "org/name", new_commit, {}, ref="v2")

    assert fetch(cache, "hf://org/name", tmp_path / "s1") == new
    assert fetch(cache, f"hf://org/name@{old_commit}", tmp_path / "s2") == old
    assert fetch(cache, "hf://org/name@v2", tmp_path / "s3") == new
    assert MANIFEST in old and MANIFEST not in new


def test_not_in_the_cache_while_offline_is_a_clear_error(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    cache_snapshot(cache, "org/name", "c" * 40, adapter_files(tmp_path, 1))
    for url in ("hf://org/other", "hf://org/name@" + "d" * 40):
        with pytest.raises(AdapterError) as caught:
            fetch(cache, url, tmp_path / f"s-{url[-3:]}")
        error = caught.value
        assert error.kind is AdapterErrorKind.NOT_FOUND and error.code == "source_not_cached"
        assert "HF_HUB_OFFLINE" in error.message and ADAPTER_CONFIG in error.message


def test_over_the_limit_in_the_cache_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    files = adapter_files(tmp_path, 1)
    cache_snapshot(cache, "org/name", "e" * 40, files)
    with pytest.raises(AdapterError) as caught:
        fetch(cache, "hf://org/name", tmp_path / "s", limit=len(files[ADAPTER_WEIGHTS]) - 1)
    assert caught.value.kind is AdapterErrorKind.TOO_LARGE
    assert not (tmp_path / "s" / ADAPTER_WEIGHTS).exists()


@pytest.mark.parametrize("url", ["hf://", "hf://name-only", "hf://org/name@", "hf://o/n@bad rev"])
def test_bad_hub_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(AdapterError) as caught:
        fetch(tmp_path, url, tmp_path / "s")
    assert caught.value.kind is AdapterErrorKind.INVALID and caught.value.code == "invalid_source"
