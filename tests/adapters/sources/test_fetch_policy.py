"""The source seam's limits (adapters.sources.base): retries only for transient failures, with
backoff, within the attempts and the timeout; a cancel stops a fetch; copies stop one chunk past
the size limit and leave no partial file."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.errors import AdapterError, AdapterErrorKind
from adapters.sources import FetchPolicy
from adapters.sources.base import CHUNK_BYTES, copy_bounded, with_retries


def failing(
    kind: AdapterErrorKind, calls: list[float], *, succeed_on: int = 0
) -> Callable[[], str]:
    def attempt() -> str:
        calls.append(time.monotonic())
        if len(calls) == succeed_on:
            return "ok"
        raise AdapterError(kind, f"try {len(calls)}", code="x")

    return attempt


def test_transient_failures_are_retried_with_growing_backoff() -> None:
    calls: list[float] = []
    policy = FetchPolicy(max_adapter_bytes=1, attempts=3, backoff_s=0.05).start()
    assert (
        with_retries(policy, "x", failing(AdapterErrorKind.UNAVAILABLE, calls, succeed_on=3))
        == "ok"
    )
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1


@pytest.mark.parametrize(
    "kind", [AdapterErrorKind.NOT_FOUND, AdapterErrorKind.TOO_LARGE, AdapterErrorKind.FORBIDDEN]
)
def test_other_failures_are_not_retried(kind: AdapterErrorKind) -> None:
    calls: list[float] = []
    policy = FetchPolicy(max_adapter_bytes=1, attempts=5, backoff_s=0.01).start()
    with pytest.raises(AdapterError) as caught:
        with_retries(policy, "x", failing(kind, calls))
    assert caught.value.kind is kind and len(calls) == 1


def test_no_retry_outlasts_the_timeout() -> None:
    calls: list[float] = []
    policy = FetchPolicy(max_adapter_bytes=1, attempts=10, backoff_s=5.0, timeout_s=1.0).start()
    started = time.monotonic()
    with pytest.raises(AdapterError) as caught:
        with_retries(policy, "x", failing(AdapterErrorKind.UNAVAILABLE, calls))
    assert len(calls) == 1 and time.monotonic() - started < 1.0
    assert caught.value.kind is AdapterErrorKind.UNAVAILABLE


def test_a_cancelled_or_late_fetch_stops() -> None:
    policy = FetchPolicy(max_adapter_bytes=1).start()
    policy.cancel.set()
    with pytest.raises(AdapterError) as caught:
        policy.check("x")
    assert caught.value.code == "fetch_cancelled"
    late = FetchPolicy(max_adapter_bytes=1, timeout_s=0.01).start()
    time.sleep(0.02)
    with pytest.raises(AdapterError) as caught:
        late.check("x")
    assert caught.value.code == "fetch_timeout"


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.read_bytes += len(chunk)
        return chunk


def test_copy_stops_one_byte_past_the_limit_and_removes_the_partial_file(tmp_path: Path) -> None:
    limit = 3 * CHUNK_BYTES
    reader = CountingReader(b"\1" * (10 * CHUNK_BYTES))
    seen: list[int] = []
    with pytest.raises(AdapterError) as caught:
        copy_bounded(
            reader,
            tmp_path / "w",
            limit=limit,
            what="w",
            policy=FetchPolicy(max_adapter_bytes=limit).start(),
            on_bytes=seen.append,
        )
    assert caught.value.kind is AdapterErrorKind.TOO_LARGE
    assert reader.read_bytes == limit + 1 and sum(seen) == limit + 1
    assert not (tmp_path / "w").exists()


def test_copy_at_the_limit_is_whole(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100
    digest = copy_bounded(
        io.BytesIO(data),
        tmp_path / "w",
        limit=len(data),
        what="w",
        policy=FetchPolicy(max_adapter_bytes=len(data)).start(),
        on_bytes=lambda n: None,
    )
    assert (tmp_path / "w").read_bytes() == data
    assert digest == hashlib.sha256(data).hexdigest()
