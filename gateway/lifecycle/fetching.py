"""Fetching remote adapters: a state of its own, run by one background task per adapter.

An admin registration with a remote source (``s3://``, ``hf://``) becomes a :class:`Fetch` in
state ``fetching`` (bytes done / total, shown by the admin API), run by ONE task per adapter
name, never by the request that asked: the task fetches the files into a staging directory
(:mod:`adapters.sources`: size limit while downloading, timeout, retries), then registers that
directory through the lifecycle's ordinary ``register`` (validation, the content-addressed
store copy), then removes the staging directory and forgets the fetch: from then on the adapter
is a registered version like any other.

Nothing is half-registered: the registry only ever holds versions whose files are in the
store. A fetch that fails stays here as ``failed`` with its reason (and the error a waiting
admin call raises) until a new registration of the name (fetched or local), a delete, or a
restart; nothing of it
is in the registry or the store. Fetches live in this process's memory: one interrupted by a
restart is gone (register it again); leftovers of its staging directory are removed at start.

While the only thing a name has is a fetch, requests for it get a 503 with Retry-After
(:meth:`AdapterFetcher.unavailable`); a registered adapter fetching a new version keeps serving
its active one. Owned by :class:`gateway.lifecycle.service.AdapterLifecycle` (built by
:func:`gateway.lifecycle.startup.build_lifecycle`); read by the admin routes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from adapters.errors import AdapterError
from adapters.sources import FetchPolicy, Sources
from gateway.errors import (
    ConflictError,
    GatewayError,
    ModelNotFoundError,
    ServiceUnavailableError,
    from_adapter_error,
)

logger = logging.getLogger(__name__)

#: ``register(directory, origin)``: the lifecycle's registration of a fetched directory.
Register = Callable[[Path, str], Awaitable[Any]]


class FetchState(StrEnum):
    FETCHING = "fetching"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FetchLimits:
    """What every fetch runs under (from the gateway's settings)."""

    max_adapter_bytes: int
    timeout_s: float = 600.0
    attempts: int = 3
    backoff_s: float = 0.5
    #: What a request for an adapter still fetching is told to wait (Retry-After).
    retry_after_s: int = 2
    #: The longest an admin call waits for a fetch (``?wait=true``).
    wait_max_s: float = 300.0

    def policy(self) -> FetchPolicy:
        return FetchPolicy(
            max_adapter_bytes=self.max_adapter_bytes,
            timeout_s=self.timeout_s,
            attempts=self.attempts,
            backoff_s=self.backoff_s,
        )


@dataclass(slots=True)
class Fetch:
    """One adapter's fetch, as the admin API shows it."""

    name: str
    source: str
    policy: FetchPolicy
    state: FetchState = FetchState.FETCHING
    bytes_done: int = 0
    bytes_total: int | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    #: Why it failed, as the gateway reports it.
    error: GatewayError | None = None
    #: What ``register`` returned, once it succeeded.
    result: Any = None
    task: asyncio.Task[None] | None = None

    def progress(self, done: int, total: int | None) -> None:
        """Called from the fetching thread: plain int stores, read by the event loop."""
        self.bytes_done = done
        if total is not None:
            self.bytes_total = total


class AdapterFetcher:
    """The fetches in progress or failed, by adapter name; one task each."""

    def __init__(self, sources: Sources, staging_root: Path, limits: FetchLimits) -> None:
        self.sources = sources
        self.staging_root = Path(staging_root)
        self.limits = limits
        self._fetches: dict[str, Fetch] = {}

    def is_remote(self, source: str) -> bool:
        """Whether ``source`` is fetched (s3://, hf://) rather than registered in place."""
        try:
            return self.sources.is_remote(source)
        except AdapterError as exc:
            raise from_adapter_error(exc) from exc

    def clean_staging(self) -> None:
        """Remove what fetches of an earlier process left (blocking; at start)."""
        if self.staging_root.is_dir():
            shutil.rmtree(self.staging_root, ignore_errors=True)

    def get(self, name: str) -> Fetch | None:
        return self._fetches.get(name)

    def list(self) -> list[Fetch]:
        return [self._fetches[name] for name in sorted(self._fetches)]

    def start(self, name: str, source: str, register: Register) -> Fetch:
        """The fetch of ``name`` from ``source``: the one running for that same source, or a
        new one (replacing a failed one). A different source while one runs: ConflictError."""
        self.is_remote(source)  # an unknown scheme fails here, before any task
        current = self._fetches.get(name)
        if current is not None and current.state is FetchState.FETCHING:
            if current.source == source:
                return current
            raise ConflictError(
                f"adapter {name!r} is being fetched from {current.source}; wait for it or "
                f"DELETE /admin/adapters/{name} before fetching it from elsewhere",
                code="adapter_fetching",
                param="source",
            )
        fetch = Fetch(name=name, source=source, policy=self.limits.policy())
        self._fetches[name] = fetch
        fetch.task = asyncio.create_task(self._run(fetch, register), name=f"fetch {name}")
        logger.info("adapter %s: fetching from %s", name, source)
        return fetch

    async def wait(self, fetch: Fetch) -> bool:
        """Wait up to ``limits.wait_max_s`` for ``fetch`` to end; True when it ended. Raises
        its error when it failed."""
        if fetch.task is not None and not fetch.task.done():
            done, _ = await asyncio.wait({fetch.task}, timeout=self.limits.wait_max_s)
            if not done:
                return False
        if fetch.error is not None:
            raise fetch.error
        return True

    def unavailable(self, name: str) -> GatewayError | None:
        """The answer to a request for ``name`` while its only version is a fetch; None when
        there is no fetch of it."""
        fetch = self._fetches.get(name)
        if fetch is None:
            return None
        if fetch.state is FetchState.FETCHING:
            total = "?" if fetch.bytes_total is None else str(fetch.bytes_total)
            return ServiceUnavailableError(
                f"adapter {name!r} is being fetched from {fetch.source} ({fetch.bytes_done} of "
                f"{total} bytes); retry in {self.limits.retry_after_s} s",
                code="adapter_fetching",
                param="model",
                headers={"Retry-After": str(self.limits.retry_after_s)},
            )
        reason = fetch.error.message if fetch.error is not None else "unknown"
        return ModelNotFoundError(
            f"The model `{name}` does not exist: fetching it from {fetch.source} failed ({reason})",
            param="model",
            code="adapter_fetch_failed",
        )

    def forget_failed(self, name: str) -> None:
        """Drop ``name``'s failed fetch (it was registered from elsewhere since)."""
        fetch = self._fetches.get(name)
        if fetch is not None and fetch.state is FetchState.FAILED:
            del self._fetches[name]

    async def cancel(self, name: str) -> bool:
        """Stop and forget ``name``'s fetch; whether there was one."""
        fetch = self._fetches.pop(name, None)
        if fetch is None:
            return False
        fetch.policy.cancel.set()
        if fetch.task is not None and not fetch.task.done():
            fetch.task.cancel()
            await asyncio.gather(fetch.task, return_exceptions=True)
        return True

    async def close(self) -> None:
        for name in list(self._fetches):
            await self.cancel(name)

    async def _run(self, fetch: Fetch, register: Register) -> None:
        staging = self.staging_root / f"{fetch.name}.{secrets.token_hex(6)}"
        try:
            await asyncio.to_thread(staging.mkdir, parents=True)
            source = self.sources.for_url(fetch.source)
            directory = await asyncio.to_thread(
                source.fetch, fetch.source, staging, fetch.policy.start(), fetch.progress
            )
            fetch.result = await register(directory, fetch.source)
        except (AdapterError, GatewayError) as exc:
            error = from_adapter_error(exc) if isinstance(exc, AdapterError) else exc
            fetch.state, fetch.error = FetchState.FAILED, error
            logger.warning("adapter %s: fetch from %s failed: %s", fetch.name, fetch.source, error)
        except asyncio.CancelledError:
            fetch.policy.cancel.set()  # the thread stops at its next chunk
            raise
        except Exception as exc:  # the staging directory (disk full), or a bug: never "fetching"
            fetch.state = FetchState.FAILED
            fetch.error = GatewayError(
                f"fetching adapter {fetch.name!r} failed inside the gateway: {exc}",
                code="fetch_failed",
            )
            logger.exception("adapter %s: fetch failed", fetch.name)
        else:
            if self._fetches.get(fetch.name) is fetch:
                del self._fetches[fetch.name]
            logger.info(
                "adapter %s: fetched %d bytes from %s", fetch.name, fetch.bytes_done, fetch.source
            )
        finally:
            fetch.finished_at = datetime.now(UTC)
            await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
