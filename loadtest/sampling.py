"""Which model (adapter) each load-test request asks for.

An :class:`AdapterMix` is a list of names and their probabilities: uniform, weighted (given
weights), or Zipf(s) over the names in order (the first is the most popular: p_k ∝ 1/k^s). An
:class:`AdapterSampler` draws from a mix with its own seeded RNG, so runs are repeatable. Used by
the locustfile, the open-loop generator and the benchmark; no I/O, no locust import.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

MAX_ADAPTERS = 100_000
MAX_ZIPF_S = 10.0


class Distribution(StrEnum):
    UNIFORM = "uniform"
    WEIGHTED = "weighted"
    ZIPF = "zipf"


def adapter_names(names: str | None = None, prefix: str | None = None, count: int = 0) -> list[str]:
    """Names from ``a,b,c``, or ``prefix-0 .. prefix-(count-1)``; both given: the list first."""
    listed = [part.strip() for part in (names or "").split(",") if part.strip()]
    if count < 0 or len(listed) + count > MAX_ADAPTERS:
        raise ValueError(f"adapter count must be 0..{MAX_ADAPTERS}, got {len(listed) + count}")
    if count and not prefix:
        raise ValueError("an adapter count needs a prefix")
    generated = [f"{prefix}-{i}" for i in range(count)] if count else []
    result = listed + generated
    if len(set(result)) != len(result):
        raise ValueError("adapter names must be unique")
    return result


def parse_weights(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"weights must be comma-separated numbers: {text!r}") from exc


def zipf_probabilities(n: int, s: float) -> list[float]:
    if not 0 < s <= MAX_ZIPF_S:
        raise ValueError(f"zipf s must be in (0, {MAX_ZIPF_S}], got {s}")
    raw = [1.0 / (k**s) for k in range(1, n + 1)]
    total = math.fsum(raw)
    return [value / total for value in raw]


@dataclass(frozen=True, slots=True)
class AdapterMix:
    names: tuple[str, ...]
    probabilities: tuple[float, ...]
    distribution: Distribution

    @classmethod
    def build(
        cls,
        names: Sequence[str],
        distribution: Distribution | str = Distribution.UNIFORM,
        *,
        weights: Sequence[float] | None = None,
        zipf_s: float = 1.0,
    ) -> AdapterMix:
        if not names:
            raise ValueError("a mix needs at least one name")
        if len(names) > MAX_ADAPTERS:
            raise ValueError(f"at most {MAX_ADAPTERS} names, got {len(names)}")
        kind = Distribution(distribution)
        n = len(names)
        if kind is Distribution.UNIFORM:
            probabilities = [1.0 / n] * n
        elif kind is Distribution.ZIPF:
            probabilities = zipf_probabilities(n, zipf_s)
        else:
            if weights is None or len(weights) != n:
                raise ValueError(f"weighted needs {n} weights, got {len(weights or [])}")
            if any(not math.isfinite(w) or w < 0 for w in weights) or math.fsum(weights) <= 0:
                raise ValueError(f"weights must be finite, >= 0 and not all 0: {list(weights)}")
            total = math.fsum(weights)
            probabilities = [w / total for w in weights]
        return cls(tuple(names), tuple(probabilities), kind)


class AdapterSampler:
    """Draws names from a mix; the same seed gives the same sequence."""

    def __init__(self, mix: AdapterMix, seed: int | None = None) -> None:
        self.mix = mix
        self._rng = random.Random(seed)
        self._cumulative = list(itertools.accumulate(mix.probabilities))
        self._cumulative[-1] = 1.0  # guard against rounding leaving a gap at the top

    def sample(self) -> str:
        index = bisect.bisect_right(self._cumulative, self._rng.random())
        return self.mix.names[min(index, len(self.mix.names) - 1)]

    def sample_many(self, count: int) -> list[str]:
        return [self.sample() for _ in range(count)]
