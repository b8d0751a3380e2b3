"""The ``sampling_defaults`` manifest key: accepted shapes, normalisation, named refusals."""

from __future__ import annotations

import pytest

from adapters.sampling import SamplingDefaultsError, validate_sampling_defaults


def test_every_key_is_accepted_and_normalised() -> None:
    given = {
        "stop": "###",
        "top_k": 40,
        "temperature": 0,
        "top_p": 1,
        "min_p": 0.05,
        "max_tokens": 256,
        "frequency_penalty": -2,
        "presence_penalty": 2.0,
        "repetition_penalty": 1.1,
    }
    checked = validate_sampling_defaults(given)
    assert checked == {
        "temperature": 0.0,
        "top_p": 1.0,
        "min_p": 0.05,
        "frequency_penalty": -2.0,
        "presence_penalty": 2.0,
        "repetition_penalty": 1.1,
        "top_k": 40,
        "max_tokens": 256,
        "stop": ["###"],
    }
    assert isinstance(checked["temperature"], float)
    assert validate_sampling_defaults({}) == {}
    assert validate_sampling_defaults({"top_k": -1, "stop": ["a", "b", "c", "d"]}) == {
        "top_k": -1,
        "stop": ["a", "b", "c", "d"],
    }


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ([0.2], "sampling_defaults must be an object, got list"),
        ({"temprature": 0.2}, "unknown keys ['temprature']"),
        ({"temperature": 2.01}, "sampling_defaults.temperature must be a number in [0, 2]"),
        ({"temperature": float("nan")}, "sampling_defaults.temperature"),
        ({"temperature": True}, "sampling_defaults.temperature"),
        ({"temperature": "0.2"}, "sampling_defaults.temperature"),
        ({"top_p": 0}, "sampling_defaults.top_p must be a number in (0, 1]"),
        ({"top_p": 1.5}, "sampling_defaults.top_p"),
        ({"min_p": -0.1}, "sampling_defaults.min_p"),
        ({"repetition_penalty": 0}, "sampling_defaults.repetition_penalty"),
        ({"presence_penalty": 3}, "sampling_defaults.presence_penalty"),
        ({"top_k": 0}, "sampling_defaults.top_k must be an integer, -1 (off) or 1 to 1000"),
        ({"top_k": 1001}, "sampling_defaults.top_k"),
        ({"top_k": 4.0}, "sampling_defaults.top_k"),
        ({"max_tokens": 0}, "sampling_defaults.max_tokens must be an integer in [1, 131072]"),
        ({"max_tokens": 10**9}, "sampling_defaults.max_tokens"),
        ({"stop": []}, "sampling_defaults.stop must be a string or a list of 1 to 4"),
        ({"stop": ["a"] * 5}, "sampling_defaults.stop"),
        ({"stop": [""]}, "sampling_defaults.stop"),
        ({"stop": ["x" * 65]}, "sampling_defaults.stop"),
        ({"stop": [3]}, "sampling_defaults.stop"),
        ({"stop": ["\ud800"]}, "no lone surrogates"),
    ],
)
def test_bad_values_are_refused_naming_the_key(given: object, named: str) -> None:
    with pytest.raises(SamplingDefaultsError) as caught:
        validate_sampling_defaults(given)
    assert named in str(caught.value)


def test_long_values_are_cut_in_the_message() -> None:
    with pytest.raises(SamplingDefaultsError) as caught:
        validate_sampling_defaults({"stop": "y" * 10_000})
    assert len(str(caught.value)) < 300
