"""Per-key limits on the request path: requests and tokens per minute, concurrent requests, and
daily and monthly token budgets, counted by the ``limits`` library.

One :class:`KeyLimiter` per app (built by :mod:`gateway.auth.tenants`). Its counters live in
``limits``' in-memory storage (each process counts alone) or, with ``LORA_GATEWAY_REDIS_URL``, in
Redis (``limits``' atomic Lua scripts), so every replica counts against the same limits.

* :meth:`KeyLimiter.admit` runs before a request reaches any engine: a spent tokens-per-minute
  window or budget refuses it (429, nothing counted); otherwise it takes one request from the
  minute's window and a concurrency slot, or refuses (429). It returns an :class:`Admission`
  with OpenAI's ``x-ratelimit-*`` headers.
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import anyio
from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerMinute,
)
from limits.aio.storage import Storage
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


def open_storage(redis_url: str | None) -> Storage:
    uri = storage_uri(redis_url)
    if uri.startswith("async+memory"):
        storage = storage_from_string(uri)
    else:
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
class _Budget:
    item: RateLimitItem
    ids: tuple[str, ...]
    resets_at: datetime
    label: str


def _budgets(key: VirtualKey, now: datetime) -> list[_Budget]:
    limits, out = key.limits, []
    # Two-period expiry: the counter must outlive its calendar period; the period is in the key.
    if limits.daily_tokens is not None:
        item = RateLimitItemPerDay(limits.daily_tokens, 2, namespace=NAMESPACE)
        day = now.strftime("%Y-%m-%d")
        out.append(_Budget(item, (key.id, "day", day), _next_day(now), "daily"))
    if limits.monthly_tokens is not None:
        item = RateLimitItemPerDay(limits.monthly_tokens, 62, namespace=NAMESPACE)
        month = now.strftime("%Y-%m")
        out.append(_Budget(item, (key.id, "month", month), _next_month(now), "monthly"))
    return out


def _rpm(limits: KeyLimits) -> RateLimitItem | None:
    return None if limits.rpm is None else RateLimitItemPerMinute(limits.rpm, namespace=NAMESPACE)


def _tpm(limits: KeyLimits) -> RateLimitItem | None:
    return None if limits.tpm is None else RateLimitItemPerMinute(limits.tpm, namespace=NAMESPACE)


@dataclass(slots=True)
class Admission:
    """What one admitted request holds until its response is complete."""

    limiter: KeyLimiter | None
    key: VirtualKey | None
    headers: dict[str, str] = field(default_factory=dict)
    concurrency_key: str | None = None
    #: Where the request's token usage is recorded, and under which key id.
    usage: UsageRecorder | None = None
    usage_key: str = NO_KEY
    finished: bool = False

    @property
    def holds_anything(self) -> bool:
        return self.limiter is not None or self.usage is not None

    async def finish(self, info: RequestInfo) -> None:
        """Record and charge the engine's token counts, free the slot; once, whatever happened."""
        if self.finished:
            return
        self.finished = True
        prompt, completion = info.prompt_tokens, info.completion_tokens
        if self.usage is not None and info.model and (prompt is not None or completion is not None):
            self.usage.record(self.usage_key, info.model, info.adapter, prompt, completion)
        if self.limiter is None or self.key is None:
            return
        tokens = (prompt or 0) + (completion or 0)
        with anyio.CancelScope(shield=True):
            try:
                await self.limiter.charge(self.key, tokens, self.concurrency_key)
            except Exception:  # never fail a finished response over bookkeeping
                logger.exception("could not charge %d tokens to key %s", tokens, self.key.id)


#: The admission of a request no limit applies to (static keys, open gateway, no limits).
def unlimited() -> Admission:
    return Admission(limiter=None, key=None)


class KeyLimiter:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._window = FixedWindowRateLimiter(storage)

    async def admit(self, key: VirtualKey) -> Admission:
        if not key.limits.any:
            return unlimited()
        try:
            return await self._admit(key)
        except GatewayError:
            raise
        except self.storage.base_exceptions as exc:
            raise LimitStoreUnavailableError(
                f"the rate-limit store is unreachable ({type(exc).__name__})"
            ) from exc

    async def _admit(self, key: VirtualKey) -> Admission:
        limits, headers = key.limits, {}
        clock = time.time()
        tpm = _tpm(limits)
        if tpm is not None:
            stats = await self._window.get_window_stats(tpm, key.id, "tokens")
            reset_s = max(0.0, stats.reset_time - clock) if stats.remaining < tpm.amount else 60.0
            headers["x-ratelimit-limit-tokens"] = str(tpm.amount)
            headers["x-ratelimit-remaining-tokens"] = str(stats.remaining)
            headers["x-ratelimit-reset-tokens"] = format_reset(reset_s)
            if stats.remaining <= 0:
                raise RateLimitError(
                    f"Rate limit reached for key {key.name} on tokens per min (TPM): limit "
                    f"{tpm.amount}. Please try again in {format_reset(reset_s)}.",
                    retry_after_s=math.ceil(reset_s),
                    kind="tokens",
                    headers=headers,
                )
        now = datetime.fromtimestamp(clock, UTC)
        for budget in _budgets(key, now):
            if await self._window.test(budget.item, *budget.ids):
                continue
            wait = (budget.resets_at - now).total_seconds()
            raise QuotaExceededError(
                f"Key {key.name} has spent its {budget.label} token budget of "
                f"{budget.item.amount}; it renews at {budget.resets_at.isoformat()}.",
                retry_after_s=math.ceil(wait),
                headers=headers,
            )
        rpm = _rpm(limits)
        if rpm is not None:
            # The fixed window's hit, keeping the count it returns: a separate read would see
            # other replicas' hits, and each answer must say what remained after its own.
            window = rpm.key_for(key.id, "requests")
            count = await self.storage.incr(window, rpm.get_expiry(), amount=1)
            allowed = count <= rpm.amount
            reset_s = max(0.0, await self.storage.get_expiry(window) - clock)
            headers["x-ratelimit-limit-requests"] = str(rpm.amount)
            headers["x-ratelimit-remaining-requests"] = str(max(0, rpm.amount - count))
            headers["x-ratelimit-reset-requests"] = format_reset(reset_s)
            if not allowed:
                raise RateLimitError(
                    f"Rate limit reached for key {key.name} on requests per min (RPM): limit "
                    f"{rpm.amount}. Please try again in {format_reset(reset_s)}.",
                    retry_after_s=math.ceil(reset_s),
                    headers=headers,
                )
        admission = Admission(limiter=self, key=key, headers=headers)
        if limits.max_concurrent is not None:
            slot = f"{NAMESPACE}/{key.id}/concurrent"
            running = await self.storage.incr(slot, CONCURRENCY_TTL_S, 1)
            if running > limits.max_concurrent:
                await self.storage.incr(slot, CONCURRENCY_TTL_S, -1)
                if rpm is not None:  # a refused request costs nothing
                    await self.storage.incr(rpm.key_for(key.id, "requests"), 60, -1)
                    headers["x-ratelimit-remaining-requests"] = str(
                        int(headers["x-ratelimit-remaining-requests"]) + 1
                    )
                raise RateLimitError(
                    f"Key {key.name} already has {limits.max_concurrent} requests running "
                    "(its concurrency limit); retry when one has finished.",
                    retry_after_s=1,
                    headers=headers,
                )
            admission.concurrency_key = slot
        return admission

    async def charge(self, key: VirtualKey, tokens: int, concurrency_key: str | None) -> None:
        if concurrency_key is not None:
            await self.storage.incr(concurrency_key, CONCURRENCY_TTL_S, -1)
        if tokens <= 0:
            return
        tpm = _tpm(key.limits)
        if tpm is not None:
            await self._window.hit(tpm, key.id, "tokens", cost=tokens)
        for budget in _budgets(key, datetime.now(UTC)):
            await self._window.hit(budget.item, *budget.ids, cost=tokens)
