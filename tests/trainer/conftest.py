"""Fixtures of the trainer tests: an offline HF environment and the tiny base model.

``data/styled.jsonl`` holds 32 prompt/completion rows (capitals and sums) whose answers all
start with the fixed style ``"Counsel says: "``; ``data/preference.jsonl`` pairs the same
styled answers (chosen) with the plain ones (rejected). The base model is ``tiny_model_dir``
(tests/conftest.py): the deterministic random tiny Llama the integration engine serves too; a
LoRA on all its linear layers learns the style within 20 steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def offline_hf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No hub here: never try one, and keep HF caches out of the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        patch.setenv("TOKENIZERS_PARALLELISM", "false")
        yield


@pytest.fixture
def jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (objects, or raw strings written as is) to a fresh JSONL file."""

    def write(rows: list[object], name: str = "rows.jsonl") -> Path:
        path = tmp_path / name
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return write
