"""Adapter samplers draw from the distribution they claim (chi-square test, fixed seeds)."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from loadtest.sampling import (
    AdapterMix,
    AdapterSampler,
    Distribution,
    adapter_names,
    parse_weights,
    zipf_probabilities,
)

DRAWS = 60_000


def chi_square(counts: Counter[str], mix: AdapterMix, draws: int) -> float:
    return sum(
        (counts[name] - draws * p) ** 2 / (draws * p)
        for name, p in zip(mix.names, mix.probabilities, strict=True)
    )


def critical_value(df: int) -> float:
    """Upper 0.1% point of chi-square(df), Wilson-Hilferty approximation (z = 3.09)."""
    z = 3.09
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def draw(mix: AdapterMix, seed: int) -> Counter[str]:
    return Counter(AdapterSampler(mix, seed).sample_many(DRAWS))


NAMES = adapter_names(prefix="a", count=20)
MIXES = {
    "uniform": AdapterMix.build(NAMES, Distribution.UNIFORM),
    "weighted": AdapterMix.build(
        NAMES, Distribution.WEIGHTED, weights=[float(i % 5 + 1) for i in range(20)]
    ),
    "zipf-1.0": AdapterMix.build(NAMES, Distribution.ZIPF, zipf_s=1.0),
    "zipf-1.5": AdapterMix.build(NAMES, Distribution.ZIPF, zipf_s=1.5),
}


@pytest.mark.parametrize("kind", sorted(MIXES))
def test_sampler_matches_its_distribution(kind: str) -> None:
    mix = MIXES[kind]
    counts = draw(mix, seed=1234)
    assert sum(counts.values()) == DRAWS
    assert chi_square(counts, mix, DRAWS) < critical_value(len(NAMES) - 1)


@pytest.mark.parametrize(
    ("drawn", "claimed"),
    [("uniform", "zipf-1.0"), ("zipf-1.0", "zipf-1.5"), ("weighted", "uniform")],
)
def test_the_same_check_rejects_another_distribution(drawn: str, claimed: str) -> None:
    counts = draw(MIXES[drawn], seed=1234)
    assert chi_square(counts, MIXES[claimed], DRAWS) > critical_value(len(NAMES) - 1)


def test_zipf_probabilities_follow_the_power_law() -> None:
    probabilities = zipf_probabilities(4, 2.0)
    harmonic = 1 + 1 / 4 + 1 / 9 + 1 / 16
    assert probabilities == pytest.approx(
        [1 / harmonic, 1 / 4 / harmonic, 1 / 9 / harmonic, 1 / 16 / harmonic]
    )


def test_same_seed_same_sequence_and_zero_weight_never_drawn() -> None:
    mix = AdapterMix.build(["a", "b", "c"], "weighted", weights=[1, 0, 3])
    first = AdapterSampler(mix, 7).sample_many(2000)
    assert first == AdapterSampler(mix, 7).sample_many(2000)
    assert "b" not in first


def test_adapter_names() -> None:
    assert adapter_names("x, y", "p", 2) == ["x", "y", "p-0", "p-1"]
    assert adapter_names(None, None, 0) == []
    with pytest.raises(ValueError, match="prefix"):
        adapter_names(count=3)
    with pytest.raises(ValueError, match="unique"):
        adapter_names("p-0", "p", 1)
    with pytest.raises(ValueError, match="count"):
        adapter_names(prefix="p", count=10**6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "weighted", "weights": [1.0]}, "needs 2 weights"),
        ({"distribution": "weighted", "weights": [1.0, -1.0]}, "finite"),
        ({"distribution": "weighted", "weights": [0.0, 0.0]}, "not all 0"),
        ({"distribution": "zipf", "zipf_s": 0.0}, "zipf s"),
        ({"distribution": "bogus"}, "bogus"),
    ],
)
def test_bad_mixes_name_the_bad_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdapterMix.build(["a", "b"], **kwargs)  # type: ignore[arg-type]


def test_parse_weights() -> None:
    assert parse_weights("1, 2.5") == [1.0, 2.5]
    assert parse_weights("") is None
    with pytest.raises(ValueError, match="numbers"):
        parse_weights("1,x")
