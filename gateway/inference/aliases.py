"""Aliases: a public name split over adapter versions by weight, sticky per user.

:class:`AliasBook` keeps the registry's aliases in memory (a dict swapped whole on every admin
change, so a request in flight keeps the version it was given) and answers
:meth:`AliasBook.pick`: the version a request for an alias goes to, chosen by a stable hash of
(alias, affinity) into the weight buckets (:func:`bucket_of`), so one user never flips between
versions while the weights stay the same. The affinity is the request's ``user`` field when
given, else the caller's key, else the client address (:func:`affinity_of`).

It also watches each target's outcomes (:class:`CanaryWatch`): with automatic rollback on
(``alias_rollback_window`` > 0), a version whose share of 5xx answers over its last ``window``
requests reaches ``threshold`` gets weight 0 (its weight moves to the largest other target),
persisted in the registry, logged and counted
(``lora_gateway_alias_rollbacks_total``). Every served alias request is counted by version
(``lora_gateway_alias_requests_total``) so a canary can be compared with the stable version.

:meth:`AliasBook.follow` re-reads them when another replica changed the registry.
Used by :class:`gateway.inference.routing.Router` (pick), :mod:`gateway.inference.proxy`
(outcomes) and the admin routes :mod:`gateway.api.admin.aliases` (changes).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter

from adapters.registry import AliasRecord, AliasTarget, Registry

logger = logging.getLogger(__name__)

#: Buckets per 100 percent: weights are whole percents, the hash spreads over 10,000 buckets.
_BUCKETS = 10_000


def bucket_of(alias: str, affinity: str) -> float:
    """Where ``affinity`` falls for ``alias``, in [0, 100): the same for the same pair always."""
    digest = hashlib.sha256(f"{alias}\0{affinity}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") % _BUCKETS) * 100 / _BUCKETS


def pick_target(record: AliasRecord, affinity: str) -> AliasTarget:
    """The target whose weight bucket holds ``affinity``'s point (weights sum to 100)."""
    point = bucket_of(record.name, affinity)
    edge = 0
    for target in record.targets:
        edge += target.weight
        if target.weight > 0 and point < edge:
            return target
    return max(record.targets, key=lambda t: t.weight)


def affinity_of(user: str | None, key_id: str | None, client: str | None) -> str:
    """What a request sticks by: its ``user`` field, else the caller's key, else its address."""
    if user:
        return f"user:{user}"
    if key_id:
        return f"key:{key_id}"
    return f"addr:{client or ''}"


def rolled_back(record: AliasRecord, canary: AliasTarget) -> tuple[AliasTarget, ...]:
    """``record``'s targets with ``canary``'s weight moved to the largest other target."""
    others = [t for t in record.targets if t != canary and t.weight > 0]
    if not others or canary.weight == 0:
        return record.targets
    heir = max(others, key=lambda t: t.weight)
    out = []
    for target in record.targets:
        if target == canary:
            out.append(AliasTarget(target.adapter, target.version, 0))
        elif target == heir:
            out.append(AliasTarget(target.adapter, target.version, target.weight + canary.weight))
        else:
            out.append(target)
    return tuple(out)


class CanaryWatch:
    """The last ``window`` outcomes of each (alias, adapter, version)."""

    def __init__(self, window: int, threshold: float) -> None:
        self.window = window
        self.threshold = threshold
        self._outcomes: dict[tuple[str, str, int], deque[bool]] = {}

    def note(self, alias: str, target: AliasTarget, failed: bool) -> bool:
        """Record one outcome; True when the window is full and its failure ratio reached the
        threshold (the window then starts over)."""
        if self.window <= 0:
            return False
        key = (alias, target.adapter, target.version)
        outcomes = self._outcomes.setdefault(key, deque(maxlen=self.window))
        outcomes.append(failed)
        if len(outcomes) < self.window or sum(outcomes) / self.window < self.threshold:
            return False
        outcomes.clear()
        return True


class AliasMetrics:
    """The alias counters, registered once per app (:func:`gateway.app.create_app`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.requests = Counter(
            "lora_gateway_alias_requests",
            "Requests for an alias by the adapter version that served them.",
            ["alias", "adapter", "version", "outcome"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "lora_gateway_alias_rollbacks",
            "Alias targets whose weight automatic rollback set to 0.",
            ["alias", "adapter", "version"],
            registry=registry,
        )


class AliasBook:
    def __init__(
        self,
        registry: Registry,
        *,
        base_model: str | None = None,
        rollback_window: int = 0,
        rollback_threshold: float = 0.5,
        metrics: AliasMetrics | None = None,
    ) -> None:
        self._registry = registry
        self._base_model = base_model
        self._aliases: Mapping[str, AliasRecord] = {}
        self._generation = -1
        self.watch = CanaryWatch(rollback_window, rollback_threshold)
        self._lock = asyncio.Lock()
        self.metrics = metrics or AliasMetrics(CollectorRegistry())

    async def refresh(self) -> None:
        generation = await asyncio.to_thread(self._registry.generation)
        records = await asyncio.to_thread(self._registry.list_aliases)
        self._aliases = {r.name: r for r in records}
        self._generation = generation

    async def follow(self, interval_s: float) -> None:
        """Re-read the aliases whenever the registry's generation moved (another replica, or
        the CLI, changed something): one primary-key read per ``interval_s``. Runs until
        cancelled; a failed read is logged and retried at the next tick."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if await asyncio.to_thread(self._registry.generation) != self._generation:
                    async with self._lock:
                        await self.refresh()
            except Exception:
                logger.exception("could not re-read the aliases from the registry")

    def get(self, name: str) -> AliasRecord | None:
        return self._aliases.get(name)

    def all(self) -> list[AliasRecord]:
        return sorted(self._aliases.values(), key=lambda r: r.name)

    def pick(self, name: str, affinity: str) -> AliasTarget | None:
        record = self._aliases.get(name)
        return pick_target(record, affinity) if record is not None else None

    async def put(self, name: str, targets: tuple[AliasTarget, ...]) -> AliasRecord:
        async with self._lock:
            record = await asyncio.to_thread(
                self._registry.put_alias, name, targets, base_model=self._base_model
            )
            await self.refresh()
            return record

    async def delete(self, name: str) -> bool:
        async with self._lock:
            found = await asyncio.to_thread(self._registry.delete_alias, name)
            await self.refresh()
            return found

    async def outcome(self, alias: str, target: AliasTarget, failed: bool) -> None:
        """Count one answer of ``target`` for ``alias``; roll it back when it fails too often."""
        self.metrics.requests.labels(
            alias, target.adapter, str(target.version), "error" if failed else "ok"
        ).inc()
        if not self.watch.note(alias, target, failed):
            return
        async with self._lock:
            record = self._aliases.get(alias)
            if record is None:
                return
            current = next(
                (
                    t
                    for t in record.targets
                    if (t.adapter, t.version) == (target.adapter, target.version)
                ),
                None,
            )
            if current is None or current.weight == 0:
                return
            targets = rolled_back(record, current)
            if targets == record.targets:
                return
            await asyncio.to_thread(
                self._registry.put_alias, alias, targets, base_model=self._base_model
            )
            await self.refresh()
        self.metrics.rollbacks.labels(alias, target.adapter, str(target.version)).inc()
        logger.warning(
            "alias %s: version %s v%d failed %d%%+ of its last %d requests; weight set to 0",
            alias,
            target.adapter,
            target.version,
            int(self.watch.threshold * 100),
            self.watch.window,
        )
