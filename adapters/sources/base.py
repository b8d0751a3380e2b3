"""The adapter-source seam: where an adapter's files come from, as one method.

:class:`AdapterSource` has one method, :meth:`~AdapterSource.fetch`: bring the contract's files
(:data:`adapters.contract.ADAPTER_FILES`) of one reference into a local staging directory and
return the directory to register from. What it returns then goes through
:meth:`adapters.store.AdapterStore.admit` like any local directory (validation, a
content-addressed read-only copy), so a later change at the source never changes a registered
version. Implementations: :mod:`adapters.sources.local`, :mod:`adapters.sources.s3`,
:mod:`adapters.sources.hf`; :func:`adapters.sources.parse_source` picks one from a URL.

Every fetch runs under a :class:`FetchPolicy`: a size limit per file enforced WHILE the bytes
arrive (:func:`copy_bounded`, also a pre-check against the size the source announces), an
overall timeout, and retries with exponential backoff for transient failures
(:func:`with_retries`; only ``UNAVAILABLE`` errors are retried). Progress is reported through a
callback ``progress(bytes_done, bytes_total_or_None)``; a caller cancels a fetch by setting
``policy.cancel``. Fetches are blocking (run them in a thread). Raises
:class:`adapters.errors.AdapterError` only. Called by the gateway's fetcher
(``gateway.lifecycle.fetching``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from adapters.contract import ADAPTER_WEIGHTS
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.layout import MAX_JSON_FILE_BYTES

logger = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total)``; the total is None while unknown.
Progress = Callable[[int, int | None], None]
T = TypeVar("T")

CHUNK_BYTES = 1 << 18


@dataclass(slots=True)
class FetchPolicy:
    """The limits one fetch runs under."""

    #: The weights file's limit (the validator's ``max_adapter_bytes``); JSON files get
    #: :data:`adapters.layout.MAX_JSON_FILE_BYTES`.
    max_adapter_bytes: int
    #: The whole fetch, retries included.
    timeout_s: float = 600.0
    #: Tries in all (1: no retry).
    attempts: int = 3
    #: Wait before the first retry; doubled for each next one.
    backoff_s: float = 0.5
    #: Set by the caller to stop a fetch at its next chunk.
    cancel: threading.Event = field(default_factory=threading.Event)
    #: ``time.monotonic()`` after which the fetch fails; set by :meth:`start`.
    deadline: float = float("inf")

    def start(self) -> FetchPolicy:
        self.deadline = time.monotonic() + self.timeout_s
        return self

    def limit_for(self, file_name: str) -> int:
        return self.max_adapter_bytes if file_name == ADAPTER_WEIGHTS else MAX_JSON_FILE_BYTES

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def check(self, what: str) -> None:
        """Raise when the fetch was cancelled or ran past its timeout."""
        if self.cancel.is_set():
            raise AdapterError(
                AdapterErrorKind.UNAVAILABLE,
                f"fetching {what} was cancelled",
                code="fetch_cancelled",
            )
        if time.monotonic() > self.deadline:
            raise AdapterError(
                AdapterErrorKind.UNAVAILABLE,
                f"fetching {what} took longer than {self.timeout_s:g} s "
                "(LORA_GATEWAY_FETCH_TIMEOUT_S)",
                code="fetch_timeout",
                param="source",
            )


class AdapterSource(ABC):
    """Where adapters come from: one URL scheme, one method."""

    #: The URL scheme this source serves (``s3``, ``hf``; ``""`` for a local path).
    scheme: str = ""

    @abstractmethod
    def fetch(self, url: str, staging: Path, policy: FetchPolicy, progress: Progress) -> Path:
        """Bring the contract's files of ``url`` into ``staging`` (an empty directory the caller
        owns and removes); the directory to register from (``staging``, or for a local path the
        path itself: the store copies it anyway)."""


def too_large(what: str, size: int, limit: int) -> AdapterError:
    return AdapterError(
        AdapterErrorKind.TOO_LARGE,
        f"{what} is {size} bytes or more, over the limit of {limit} bytes "
        "(LORA_GATEWAY_MAX_ADAPTER_BYTES): refused while downloading",
        code="adapter_too_large",
        param="source",
    )


def copy_bounded(
    reader: BinaryIO,
    target: Path,
    *,
    limit: int,
    what: str,
    policy: FetchPolicy,
    on_bytes: Callable[[int], None],
) -> str:
    """Copy ``reader`` to the new file ``target``, stopping as soon as more than ``limit`` bytes
    arrived (the download is abandoned there, the partial file removed); the copy's sha256."""
    digest = hashlib.sha256()
    copied = 0
    try:
        with target.open("xb") as out:
            while True:
                policy.check(what)
                chunk = reader.read(min(CHUNK_BYTES, limit + 1 - copied))
                if not chunk:
                    break
                copied += len(chunk)
                on_bytes(len(chunk))
                if copied > limit:
                    raise too_large(what, copied, limit)
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)  # no partial file is left behind
        raise
    return digest.hexdigest()


def with_retries(policy: FetchPolicy, what: str, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` until it succeeds, retrying UNAVAILABLE errors with exponential backoff
    within the policy's attempts and timeout; the last error otherwise."""
    delay = policy.backoff_s
    for number in range(1, policy.attempts + 1):
        policy.check(what)
        try:
            return attempt()
        except AdapterError as exc:
            retryable = exc.kind is AdapterErrorKind.UNAVAILABLE and exc.code not in (
                "fetch_timeout",
                "fetch_cancelled",
            )
            if not retryable or number == policy.attempts or delay >= policy.remaining_s():
                if retryable and number > 1:
                    exc.message = f"{exc.message} (after {number} tries)"
                    exc.args = (exc.message,)
                raise
            logger.warning(
                "fetching %s failed (try %d of %d), retrying in %.1f s: %s",
                what,
                number,
                policy.attempts,
                delay,
                exc.message,
            )
        policy.cancel.wait(delay)
        delay *= 2
    raise AssertionError("unreachable: the last attempt returns or raises")
