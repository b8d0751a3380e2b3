"""Where the trainer writes: a finished adapter is never lost to a symlink, a `~` or a crash.

Regression tests of issue 10, 2.7: ``--output`` that is a symlink or holds a literal ``~``
could delete (or silently miss) a finished adapter, and ``--overwrite`` removed the old
adapter before the new one was in place. Each test trains for real on the tiny base (a few
seconds) and looks at the files on disk afterwards.
"""

from __future__ import annotations

import os
import pathlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import trainer.output as output_module
import trainer.train as train_module
from trainer.cli import app
from trainer.config import ConfigError, TrainConfig
from trainer.output import OutputError, checked_output, publish
from trainer.train import train

STYLED = Path(__file__).parent / "data" / "styled.jsonl"
OLD_FILES = {
    "adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
    "adapter_model.safetensors": b"old weights",
    "manifest.json": b'{"adapter_name": "old"}',
}


def config(base: Path, output: Path | str, **overrides: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "base_model": base,
        "data": STYLED,
        "output": output,
        "rank": 8,
        "target_modules": "attention",
        "max_steps": 2,
        "batch_size": 8,
        "eval_fraction": 0.1,
    }
    fields.update(overrides)
    return TrainConfig(**fields)


def finished_adapter(directory: Path) -> dict[str, bytes]:
    directory.mkdir(parents=True)
    for name, content in OLD_FILES.items():
        (directory / name).write_bytes(content)
    return snapshot(directory)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if path.name.startswith("."))


def test_output_that_is_a_symlink_is_refused_and_its_target_kept(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    real = tmp_path / "v1"
    before = finished_adapter(real)
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)

    with pytest.raises(ConfigError, match=r"is a symlink"):
        train(config(tiny_model_dir, link), progress=False, overwrite=True)
    assert snapshot(real) == before
    assert link.is_symlink() and link.resolve() == real


def test_dangling_symlink_output_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere", target_is_directory=True)
    with pytest.raises(ConfigError, match=r"is a symlink"):
        train(config(tiny_model_dir, link), progress=False)
    assert not (tmp_path / "nowhere").exists()


def test_tilde_in_output_means_home_everywhere(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    existing = home / "adapters" / "legal"
    before = finished_adapter(existing)

    # the finished adapter at ~/adapters/legal is seen, so no --overwrite means no training
    with pytest.raises(ConfigError, match=r"--overwrite"):
        train(config(tiny_model_dir, "~/adapters/legal"), progress=False)
    assert snapshot(existing) == before

    written = train(config(tiny_model_dir, "~/adapters/other"), progress=False)
    assert written == home / "adapters" / "other"
    assert (written / "adapter_model.safetensors").is_file()
    assert not (cwd / "~").exists()  # no literal "~" directory beside the user's files
    assert snapshot(existing) == before


def test_overwrite_that_fails_at_the_swap_keeps_an_adapter_whole(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rename call fails once the files are written: the old adapter must survive."""
    output = tmp_path / "legal"
    before = finished_adapter(output)
    real_write_manifest = train_module.write_manifest

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("simulated crash at the swap")

    def write_then_break_renames(directory: Path, manifest: dict[str, Any]) -> Path:
        written = real_write_manifest(directory, manifest)
        monkeypatch.setattr(os, "rename", crash)
        monkeypatch.setattr(os, "replace", crash)
        monkeypatch.setattr(pathlib.Path, "rename", crash)
        monkeypatch.setattr(pathlib.Path, "replace", crash)
        return written

    monkeypatch.setattr(train_module, "write_manifest", write_then_break_renames)
    try:
        train(config(tiny_model_dir, output), progress=False, overwrite=True)
    except OSError:
        monkeypatch.undo()
        assert snapshot(output) == before  # the swap failed: the old adapter, whole
    else:
        monkeypatch.undo()  # the swap needed no rename call that failed: the new one, whole
        assert (output / "adapter_model.safetensors").read_bytes() != OLD_FILES[
            "adapter_model.safetensors"
        ]
        assert (output / "manifest.json").is_file()
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_the_whole_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "legal"
    finished_adapter(output)
    (output / "stale-extra.txt").write_text("from the old run")
    train(config(tiny_model_dir, output), progress=False, overwrite=True)
    assert sorted(snapshot(output)) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    assert leftovers(tmp_path) == []


# --- the swap itself, without training -----------------------------------------------------------


def write_new(staging: Path) -> None:
    (staging / "adapter_model.safetensors").write_bytes(b"new weights")


def test_publish_swaps_atomically_and_leaves_nothing_behind(tmp_path: Path) -> None:
    output = checked_output(tmp_path / "legal", overwrite=True)
    finished_adapter(output)
    assert publish(output, write_new) == output
    assert snapshot(output) == {"adapter_model.safetensors": b"new weights"}
    assert oct(output.stat().st_mode & 0o777) == oct(0o755)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("failing_call", [1, 2])
def test_fallback_swap_keeps_the_old_adapter_when_a_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    """Without RENAME_EXCHANGE: old aside, new in; a failure at either rename restores the old."""
    output = checked_output(tmp_path / "legal", overwrite=True)
    before = finished_adapter(output)
    real_rename = os.rename
    calls: list[tuple[str, str]] = []

    def flaky_rename(src: Any, dst: Any) -> None:
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == failing_call:
            raise OSError("simulated failure")
        real_rename(src, dst)

    monkeypatch.setattr(output_module, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated failure"):
        publish(output, write_new)
    monkeypatch.undo()
    assert snapshot(output) == before
    assert leftovers(tmp_path) == []


def test_fallback_swap_replaces_the_old_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = checked_output(tmp_path / "legal", overwrite=True)
    finished_adapter(output)
    monkeypatch.setattr(output_module, "_exchange", lambda a, b: False)
    publish(output, write_new)
    assert snapshot(output) == {"adapter_model.safetensors": b"new weights"}
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_adapter_and_no_staging(tmp_path: Path) -> None:
    output = checked_output(tmp_path / "legal", overwrite=True)
    before = finished_adapter(output)

    def half_write(staging: Path) -> None:
        (staging / "adapter_config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        publish(output, half_write)
    assert snapshot(output) == before
    assert leftovers(tmp_path) == []


def test_checked_output_refusals(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a directory"):
        checked_output(tmp_path / "file", overwrite=True)
    for nothing in (tmp_path / "..", Path("."), Path("/")):
        with pytest.raises(OutputError, match="names no directory"):
            checked_output(nothing, overwrite=True)
    with pytest.raises(OutputError, match="cannot expand '~no-such-user-here'"):
        checked_output("~no-such-user-here/x", overwrite=False)
    # a symlinked parent is fine: the link is resolved, the last part is not
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real", target_is_directory=True)
    assert checked_output(tmp_path / "via" / "out", overwrite=False) == tmp_path / "real" / "out"


def test_merge_refuses_a_symlinked_output(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    finished_adapter(adapter)
    real = tmp_path / "merged-v1"
    before = finished_adapter(real)
    link = tmp_path / "merged"
    link.symlink_to(real, target_is_directory=True)
    result = CliRunner().invoke(app, ["merge", str(adapter), "--output", str(link), "--overwrite"])
    assert result.exit_code == 2, result.output
    assert "is a symlink" in " ".join(result.output.split())
    assert snapshot(real) == before
