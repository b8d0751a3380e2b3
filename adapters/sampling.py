"""Default sampling parameters an adapter carries: the ``sampling_defaults`` manifest key.

An adapter's ``manifest.json`` may hold, at top level::

    "sampling_defaults": {
        "temperature": 0.2,            # number in [0, 2]
        "top_p": 0.9,                  # number in (0, 1]
        "top_k": 40,                   # integer, -1 (off) or 1..1000
        "min_p": 0.05,                 # number in [0, 1]
        "max_tokens": 256,             # integer in [1, 131072]
        "stop": ["###"],               # 1 to 4 non-empty strings of at most 64 characters
        "frequency_penalty": 0.0,      # number in [-2, 2]
        "presence_penalty": 0.0,       # number in [-2, 2]
        "repetition_penalty": 1.1      # number in (0, 2]
    }

Every key is optional; an unknown key, a wrong type or a value out of bounds is refused. They
are the values the gateway uses for a request to that adapter that omits the parameter: what
the client sends always wins. Written by the trainer (``lora-trainer train --default-...``,
:mod:`trainer.manifest`) and read by the gateway; a refusal is an
:class:`~adapters.errors.AdapterError` of kind INVALID (code ``invalid_sampling_defaults``).
Pure Python, no I/O: both import it for free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from adapters.errors import AdapterError, AdapterErrorKind

SAMPLING_DEFAULTS_KEY = "sampling_defaults"

MAX_STOP_SEQUENCES = 4  # OpenAI's limit on "stop"
MAX_STOP_CHARS = 64
MAX_TOP_K = 1000
MAX_MAX_TOKENS = 131_072

# name -> (low, high, low is exclusive) for the float parameters
_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, True),
    "min_p": (0.0, 1.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "presence_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.0, 2.0, True),
}
SAMPLING_KEYS = (*_NUMBERS, "top_k", "max_tokens", "stop")


class SamplingDefaultsError(AdapterError):
    """A ``sampling_defaults`` value is refused; the message names the key and the value."""

    def __init__(self, message: str) -> None:
        super().__init__(
            AdapterErrorKind.INVALID,
            message,
            code="invalid_sampling_defaults",
            param=SAMPLING_DEFAULTS_KEY,
        )


def validate_sampling_defaults(value: object) -> dict[str, Any]:
    """The checked defaults, normalised (floats as float, ``stop`` as a list), keys in order.

    Raises :class:`SamplingDefaultsError` naming the first bad key.
    """
    if not isinstance(value, Mapping):
        raise SamplingDefaultsError(
            f"{SAMPLING_DEFAULTS_KEY} must be an object, got {type(value).__name__}"
        )
    unknown = sorted(str(key) for key in value if key not in SAMPLING_KEYS)
    if unknown:
        raise SamplingDefaultsError(
            f"{SAMPLING_DEFAULTS_KEY} has unknown keys {unknown}; known: {list(SAMPLING_KEYS)}"
        )
    out: dict[str, Any] = {}
    for key in SAMPLING_KEYS:
        if key not in value:
            continue
        item = value[key]
        if key in _NUMBERS:
            out[key] = _number(key, item, *_NUMBERS[key])
        elif key == "top_k":
            if not _is_int(item) or not (item == -1 or 1 <= item <= MAX_TOP_K):
                raise _bad(key, item, f"an integer, -1 (off) or 1 to {MAX_TOP_K}")
            out[key] = item
        elif key == "max_tokens":
            if not _is_int(item) or not 1 <= item <= MAX_MAX_TOKENS:
                raise _bad(key, item, f"an integer in [1, {MAX_MAX_TOKENS}]")
            out[key] = item
        else:
            out[key] = _stop(item)
    return out


def _number(key: str, item: object, low: float, high: float, open_low: bool) -> float:
    ok = (
        isinstance(item, int | float)
        and not isinstance(item, bool)
        and math.isfinite(item)
        and (low < item if open_low else low <= item)
        and item <= high
    )
    if not ok:
        bounds = f"{'(' if open_low else '['}{low:g}, {high:g}]"
        raise _bad(key, item, f"a number in {bounds}")
    return float(item)  # type: ignore[arg-type]


def _stop(item: object) -> list[str]:
    stops = [item] if isinstance(item, str) else item
    if (
        not isinstance(stops, list)
        or not 1 <= len(stops) <= MAX_STOP_SEQUENCES
        or not all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in stops)
    ):
        raise _bad(
            "stop",
            item,
            f"a string or a list of 1 to {MAX_STOP_SEQUENCES} non-empty strings of at most "
            f"{MAX_STOP_CHARS} characters",
        )
    for stop in stops:
        try:
            stop.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("stop", item, "valid Unicode (no lone surrogates)") from None
    return list(stops)


def _is_int(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool)


def _bad(key: str, item: object, expected: str) -> SamplingDefaultsError:
    shown = repr(item)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return SamplingDefaultsError(f"{SAMPLING_DEFAULTS_KEY}.{key} must be {expected}, got {shown}")
