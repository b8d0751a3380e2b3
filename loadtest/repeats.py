"""Repetitions of the benchmark: every figure as a median with its spread, and run-to-run diffs.

:mod:`loadtest.bench` runs each suite ``--repeat`` times; each repetition measures the baseline
(direct) and the targets phase by phase, and :func:`loadtest.report.to_dict` derives that
repetition's added latencies and ratios from its own baseline. :func:`aggregate` then turns the
per-repetition comparison rows into rows whose every number is a :data:`Spread` (median, min,
max, and the raw values), so one noisy repetition moves the range, not the figure.
:func:`differences` compares two such results (``--compare OLD.json``): a change is flagged only
when the two runs' min-max ranges do not overlap, i.e. it is beyond the spread either run saw.
Pure functions over the JSON shapes, so the tests feed them by hand.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: ``{"median": m, "min": lo, "max": hi, "values": [...]}``; the median of the values that
#: were measured (a repetition where a figure is missing, e.g. overloaded, does not count).
Spread = dict[str, Any]

#: The fields that identify a row of each comparison table across repetitions and runs.
ROW_KEYS: Mapping[str, tuple[str, ...]] = {
    "latency": ("upstream", "mode", "rate"),
    "max_rps": ("upstream",),
    "registry_size": ("registered", "traffic"),
    "adapter_scaling": ("adapters",),
    "placement": ("policy", "upstream"),
    "limits": ("case",),
}


def spread(values: Sequence[float | None]) -> Spread:
    measured = [float(v) for v in values if v is not None]
    if not measured:
        return {"median": None, "min": None, "max": None, "values": list(values)}
    return {
        "median": statistics.median(measured),
        "min": min(measured),
        "max": max(measured),
        "values": list(values),
    }


def is_spread(value: object) -> bool:
    return isinstance(value, dict) and "median" in value and "values" in value


def median_of(value: Any) -> Any:
    """The figure to show: a spread's median, anything else as it is."""
    return value["median"] if is_spread(value) else value


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key(row: Mapping[str, Any], fields: Sequence[str]) -> tuple[Any, ...]:
    return tuple(median_of(row.get(field)) for field in fields)


def aggregate_rows(
    per_repetition: Sequence[Sequence[Mapping[str, Any]]], keys: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per key (in first-seen order); numbers become spreads over the repetitions,
    counts (``errors``) are summed, lists (``overloaded``) are joined without repeats."""
    order: dict[tuple[Any, ...], list[Mapping[str, Any] | None]] = {}
    for index, rows in enumerate(per_repetition):
        for row in rows:
            slot = order.setdefault(_key(row, keys), [None] * len(per_repetition))
            slot[index] = row
    out: list[dict[str, Any]] = []
    for key, slots in order.items():
        present = [row for row in slots if row is not None]
        merged: dict[str, Any] = dict(zip(keys, key, strict=True))
        for field in present[0]:
            if field in keys:
                continue
            values = [row.get(field) if row is not None else None for row in slots]
            if field == "errors":
                merged[field] = sum(v for v in values if _is_number(v))
            elif all(v is None or _is_number(v) for v in values):
                merged[field] = spread(values)
            elif all(isinstance(v, list) for v in values if v is not None):
                merged[field] = list(dict.fromkeys(x for v in values if v for x in v))
            else:
                merged[field] = next((v for v in values if v is not None), None)
        merged["repetitions"] = len(present)
        out.append(merged)
    return out


def aggregate(per_repetition: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The ``comparison`` of several repetitions (each a :func:`loadtest.report.to_dict`)."""
    return {
        table: aggregate_rows([rep["comparison"].get(table, []) for rep in per_repetition], keys)
        for table, keys in ROW_KEYS.items()
    }


@dataclass(frozen=True, slots=True)
class Difference:
    table: str
    row: tuple[Any, ...]
    field: str
    old: Spread
    new: Spread

    @property
    def change(self) -> float:
        return float(self.new["median"]) - float(self.old["median"])

    @property
    def beyond_spread(self) -> bool:
        """The two runs' ranges do not overlap: neither run's noise covers the change."""
        return bool(self.new["min"] > self.old["max"] or self.new["max"] < self.old["min"])


def _as_spread(value: Any) -> Spread | None:
    """A spread as it is; a bare number (a run from before ``--repeat``) as a spread of one."""
    if is_spread(value):
        return value if value["median"] is not None else None
    return spread([value]) if _is_number(value) else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Difference]:
    """Every figure measured in both runs (same table, row and field), old against new."""
    found: list[Difference] = []
    for table, keys in ROW_KEYS.items():
        old_rows = {_key(r, keys): r for r in old.get("comparison", {}).get(table, [])}
        for row in new.get("comparison", {}).get(table, []):
            before = old_rows.get(_key(row, keys))
            if before is None:
                continue
            for field, value in row.items():
                if field in keys or field in ("errors", "repetitions"):
                    continue
                now, previous = _as_spread(value), _as_spread(before.get(field))
                if now is not None and previous is not None:
                    found.append(Difference(table, _key(row, keys), field, previous, now))
    return found
