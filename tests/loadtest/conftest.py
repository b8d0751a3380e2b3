"""Fixtures of the load-test tests: a real FAKE upstream process (not vLLM) on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.procs import Service, start_fake_vllm

FAKE_MODEL = "fake-base"
FAKE_CHUNKS = 5


@pytest.fixture(scope="session")
def fake_model() -> str:
    return FAKE_MODEL


@pytest.fixture(scope="session")
def fake_chunks() -> int:
    return FAKE_CHUNKS


@pytest.fixture(scope="module")
def fake_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``python -m loadtest.fake_vllm`` as a child process, stopped after the module."""
    logs: Path = tmp_path_factory.mktemp("fake-upstream-logs")
    service = start_fake_vllm(logs, model=FAKE_MODEL, chunks=FAKE_CHUNKS)
    try:
        yield service
    finally:
        service.stop()
