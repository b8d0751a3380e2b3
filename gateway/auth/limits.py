"""Per-key limits on the request path: requests and tokens per minute, concurrent requests, and
daily and monthly token budgets, counted by the ``limits`` library.

One :class:`KeyLimiter` per app (built by :mod:`gateway.auth.tenants`). Its counters live in
``limits``' in-memory storage (each process counts alone) or, with ``LORA_GATEWAY_REDIS_URL``, in
Redis (``limits``' atomic Lua scripts), so every replica counts against the same limits.

* :meth:`KeyLimiter.admit` runs before a request reaches any engine: a spent tokens-per-minute
  window or budget refuses it (429, nothing counted); otherwise it takes one request from the
  minute's window and a concurrency slot, or refuses (429). It returns an :class:`Admission`
  with OpenAI's ``x-ratelimit-*`` headers.
* :meth:`KeyLimiter.peek` gives the same headers without counting anything, for the answers
  that took nothing (a bad body, a model out of scope, ``/v1/models``).
* :meth:`Admission.finish` runs when the response is complete (streams included): it charges the
  tokens the engine counted to the minute window and the budgets, and frees the slot.

Fixed windows that start at a key's first hit in them: ``limits``' fixed window always records
a hit (``incr``), so tokens known only after the answer can be charged even past the limit,
which then refuses the next request. Budgets are calendar windows (UTC day, UTC month): the
period is part of the counter's key.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerMinute,
)
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string

from gateway.auth.keys import KeyLimits, VirtualKey
from gateway.auth.usage_records import NO_KEY, UsageRecorder
from gateway.errors import GatewayError, QuotaExceededError, RateLimitError
from gateway.inference.record import RequestInfo

logger = logging.getLogger(__name__)

NAMESPACE = "lgw"
#: A concurrency counter outlives a crashed replica's in-flight requests by at most this much.
CONCURRENCY_TTL_S = 24 * 3600
#: How often the in-process storage frees expired counters (:class:`SweptMemoryStorage`).
SWEEP_INTERVAL_S = 5.0


class LimitStoreUnavailableError(GatewayError):
    status_code = 503
    error_type = "limits_unavailable"
    default_code = "limits_unavailable"


def storage_uri(redis_url: str | None) -> str:
    """The ``limits`` storage for this app: Redis when a URL is given, else in-memory."""
    if not redis_url:
        return "async+memory://"
    scheme, sep, rest = redis_url.partition("://")
    if not sep or scheme not in ("redis", "rediss"):
        raise ValueError(
            f"LORA_GATEWAY_REDIS_URL must be redis://... or rediss://..., not {scheme}"
        )
    return f"async+{scheme}://{rest}"


class SweptMemoryStorage(MemoryStorage):
    """``limits``' in-process storage, its sweep of expired counters run at most once per
    ``sweep_interval_s``.

    ``limits`` (5.8) starts a sweep of *every* counter after each increment whose previous
    sweep has finished, so each request paid CPU in proportion to the counters alive: with
    10,000 keys' concurrency and budget counters (kept for a day to two months), about 1 ms per
    increment and 4 ms per request. The sweep only frees memory: a read drops an expired
    counter itself (``get``, which ``incr`` and the window strategies call first), so counting
    stays exact however rarely it runs. Overrides the one (name-mangled) hook ``incr``,
    ``decr`` and ``acquire_entry`` call; ``tests/gateway/auth/test_limits_and_cache.py``
    notices if a ``limits`` upgrade renames it.
    """

    def __init__(self, sweep_interval_s: float = SWEEP_INTERVAL_S) -> None:
        super().__init__()
        self.sweep_interval_s = sweep_interval_s
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval_s
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]


def open_storage(redis_url: str | None) -> Storage:
    uri = storage_uri(redis_url)
    if uri.startswith("async+memory"):
        return SweptMemoryStorage()
    storage = storage_from_string(uri, implementation="redispy")
    assert isinstance(storage, Storage)
    return storage


def format_reset(seconds: float) -> str:
    """OpenAI's spelling of a duration in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{rest}s"


def _next_day(now: datetime) -> datetime:
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def _next_month(now: datetime) -> datetime:
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True, slots=True)
class Subject:
    """What limits are counted for: a virtual key, or an adapter (its own protection)."""

    id: str
    #: For messages: ``key team-a``, ``adapter legal-lora``.
    label: str
    limits: KeyLimits

    @classmethod
    def of_key(cls, key: VirtualKey) -> Subject:
        return cls(key.id, f"key {key.name}", key.limits)


@dataclass(frozen=True, slots=True)
class _Budget:
    item: RateLimitItem
    ids: tuple[str, ...]
    resets_at: datetime
    label: str


def _budgets(subject: Subject, now: datetime) -> list[_Budget]:
    limits, out = subject.limits, []
    # Two-period expiry: the counter must outlive its calendar period; the period is in the key.
    if limits.daily_tokens is not None:
        item = RateLimitItemPerDay(limits.daily_tokens, 2, namespace=NAMESPACE)
        day = now.strftime("%Y-%m-%d")
        out.append(_Budget(item, (subject.id, "day", day), _next_day(now), "daily"))
    if limits.monthly_tokens is not None:
        item = RateLimitItemPerDay(limits.monthly_tokens, 62, namespace=NAMESPACE)
        month = now.strftime("%Y-%m")
        out.append(_Budget(item, (subject.id, "month", month), _next_month(now), "monthly"))
    return out


def _rpm(limits: KeyLimits) -> RateLimitItem | None:
    return None if limits.rpm is None else RateLimitItemPerMinute(limits.rpm, namespace=NAMESPACE)


def _tpm(limits: KeyLimits) -> RateLimitItem | None:
    return None if limits.tpm is None else RateLimitItemPerMinute(limits.tpm, namespace=NAMESPACE)


@dataclass(frozen=True, slots=True)
class Grant:
    """What one subject gave a request: a request from its minute window, a concurrency slot."""

    subject: Subject
    rpm_window: str | None = None
    concurrency_key: str | None = None


class TokenSink(Protocol):
    """Where a finished request's tokens are counted live, per caller and model
    (:class:`gateway.observability.key_tokens.KeyTokenMetrics`)."""

    def count(
        self,
        key: str,
        model: str | None,
        adapter: str | None,
        prompt: int | None,
        completion: int | None,
    ) -> None: ...


@dataclass(slots=True)
class Admission:
    """What one admitted request holds until its response is complete."""

    limiter: KeyLimiter | None
    grants: list[Grant] = field(default_factory=list)
    #: OpenAI's x-ratelimit-* headers, for the key's own limits.
    headers: dict[str, str] = field(default_factory=dict)
    #: Where the request's token usage is recorded, and under which key id.
    usage: UsageRecorder | None = None
    usage_key: str = NO_KEY
    #: Where the tokens are counted as a metric, and under which caller label (a key's name).
    tokens: TokenSink | None = None
    token_label: str = ""
    finished: bool = False

    @property
    def holds_anything(self) -> bool:
        return bool(self.grants) or self.usage is not None or self.tokens is not None

    async def finish(self, info: RequestInfo) -> None:
        """Record and charge the engine's token counts, free the slots; once, whatever happened."""
        if self.finished:
            return
        self.finished = True
        prompt, completion = info.prompt_tokens, info.completion_tokens
        if info.model and (prompt is not None or completion is not None):
            if self.usage is not None:
                self.usage.record(self.usage_key, info.model, info.adapter, prompt, completion)
            if self.tokens is not None:
                self.tokens.count(self.token_label, info.model, info.adapter, prompt, completion)
        if self.limiter is None or not self.grants:
            return
        tokens = (prompt or 0) + (completion or 0)
        with anyio.CancelScope(shield=True):
            for grant in self.grants:
                try:
                    await self.limiter.charge(grant, tokens)
                except Exception:  # never fail a finished response over bookkeeping
                    logger.exception("could not charge %d tokens to %s", tokens, grant.subject.id)


#: The admission of a request no limit applies to (static keys, open gateway, no limits).
def unlimited() -> Admission:
    return Admission(limiter=None)


class KeyLimiter:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._window = FixedWindowRateLimiter(storage)

    async def admit(self, subjects: Sequence[Subject]) -> Admission:
        """All of ``subjects`` admit the request, or none holds anything of it (429).

        The first subject's limits make the response's x-ratelimit-* headers (the key's).
        """
        admission = Admission(limiter=self)
        try:
            for subject in subjects:
                if not subject.limits.any:
                    continue
                headers: dict[str, str] = {}
                try:
                    admission.grants.append(await self._admit(subject, headers))
                finally:
                    if subject is subjects[0]:
                        admission.headers = headers
        except GatewayError as exc:
            exc.headers.update(admission.headers)
            await self._release_all(admission.grants)
            raise
        except self.storage.base_exceptions as exc:
            await self._release_all(admission.grants)
            raise LimitStoreUnavailableError(
                f"the rate-limit store is unreachable ({type(exc).__name__})"
            ) from exc
        return admission

    async def _release_all(self, grants: Sequence[Grant]) -> None:
        """Give back what earlier subjects granted a request a later one refused: it costs
        nothing."""
        with anyio.CancelScope(shield=True):
            for grant in grants:
                try:
                    await self._give_back(grant)
                except Exception:
                    logger.exception("could not give back a grant of %s", grant.subject.id)

    async def _give_back(self, grant: Grant) -> None:
        if grant.concurrency_key is not None:
            await self.storage.incr(grant.concurrency_key, CONCURRENCY_TTL_S, -1)
        if grant.rpm_window is not None:
            await self.storage.incr(grant.rpm_window, 60, -1)

    async def _admit(self, subject: Subject, headers: dict[str, str]) -> Grant:
        limits, who = subject.limits, subject.label
        clock = time.time()
        tpm = _tpm(limits)
        if tpm is not None:
            stats = await self._window.get_window_stats(tpm, subject.id, "tokens")
            reset_s = max(0.0, stats.reset_time - clock) if stats.remaining < tpm.amount else 60.0
            headers["x-ratelimit-limit-tokens"] = str(tpm.amount)
            headers["x-ratelimit-remaining-tokens"] = str(stats.remaining)
            headers["x-ratelimit-reset-tokens"] = format_reset(reset_s)
            if stats.remaining <= 0:
                raise RateLimitError(
                    f"Rate limit reached for {who} on tokens per min (TPM): limit "
                    f"{tpm.amount}. Please try again in {format_reset(reset_s)}.",
                    retry_after_s=math.ceil(reset_s),
                    kind="tokens",
                )
        now = datetime.fromtimestamp(clock, UTC)
        for budget in _budgets(subject, now):
            if await self._window.test(budget.item, *budget.ids):
                continue
            wait = (budget.resets_at - now).total_seconds()
            raise QuotaExceededError(
                f"The {who} has spent its {budget.label} token budget of "
                f"{budget.item.amount}; it renews at {budget.resets_at.isoformat()}.",
                retry_after_s=math.ceil(wait),
            )
        rpm = _rpm(limits)
        rpm_window = None
        if rpm is not None:
            # The fixed window's hit, keeping the count it returns: a separate read would see
            # other replicas' hits, and each answer must say what remained after its own.
            window = rpm.key_for(subject.id, "requests")
            count = await self.storage.incr(window, rpm.get_expiry(), amount=1)
            reset_s = max(0.0, await self.storage.get_expiry(window) - clock)
            headers["x-ratelimit-limit-requests"] = str(rpm.amount)
            headers["x-ratelimit-remaining-requests"] = str(max(0, rpm.amount - count))
            headers["x-ratelimit-reset-requests"] = format_reset(reset_s)
            if count > rpm.amount:
                raise RateLimitError(
                    f"Rate limit reached for {who} on requests per min (RPM): limit "
                    f"{rpm.amount}. Please try again in {format_reset(reset_s)}.",
                    retry_after_s=math.ceil(reset_s),
                )
            rpm_window = window
        if limits.max_concurrent is None:
            return Grant(subject, rpm_window)
        slot = f"{NAMESPACE}/{subject.id}/concurrent"
        running = await self.storage.incr(slot, CONCURRENCY_TTL_S, 1)
        if running > limits.max_concurrent:
            await self.storage.incr(slot, CONCURRENCY_TTL_S, -1)
            if rpm_window is not None:  # a refused request costs nothing
                await self.storage.incr(rpm_window, 60, -1)
                remaining = int(headers["x-ratelimit-remaining-requests"]) + 1
                headers["x-ratelimit-remaining-requests"] = str(remaining)
            raise RateLimitError(
                f"The {who} already has {limits.max_concurrent} requests running "
                "(its concurrency limit); retry when one has finished.",
                retry_after_s=1,
            )
        return Grant(subject, rpm_window, slot)

    async def peek(self, subject: Subject) -> dict[str, str]:
        """The x-ratelimit-* headers of ``subject`` as they stand, counting nothing: for the
        answers that took nothing from the windows (a bad body, a model out of scope,
        ``/v1/models``)."""
        limits, headers = subject.limits, {}
        clock = time.time()
        tpm = _tpm(limits)
        if tpm is not None:
            stats = await self._window.get_window_stats(tpm, subject.id, "tokens")
            reset_s = max(0.0, stats.reset_time - clock) if stats.remaining < tpm.amount else 60.0
            headers["x-ratelimit-limit-tokens"] = str(tpm.amount)
            headers["x-ratelimit-remaining-tokens"] = str(stats.remaining)
            headers["x-ratelimit-reset-tokens"] = format_reset(reset_s)
        rpm = _rpm(limits)
        if rpm is not None:
            window = rpm.key_for(subject.id, "requests")
            count = await self.storage.get(window)
            reset_s = max(0.0, await self.storage.get_expiry(window) - clock) if count else 60.0
            headers["x-ratelimit-limit-requests"] = str(rpm.amount)
            headers["x-ratelimit-remaining-requests"] = str(max(0, rpm.amount - count))
            headers["x-ratelimit-reset-requests"] = format_reset(reset_s)
        return headers

    async def charge(self, grant: Grant, tokens: int) -> None:
        if grant.concurrency_key is not None:
            await self.storage.incr(grant.concurrency_key, CONCURRENCY_TTL_S, -1)
        if tokens <= 0:
            return
        subject = grant.subject
        tpm = _tpm(subject.limits)
        if tpm is not None:
            await self._window.hit(tpm, subject.id, "tokens", cost=tokens)
        for budget in _budgets(subject, datetime.now(UTC)):
            await self._window.hit(budget.item, *budget.ids, cost=tokens)
