"""Training data: read a JSONL file, detect its format, validate every row, convert it for TRL.

Called by :func:`trainer.train.train` and :mod:`trainer.evaluate`. Four row formats, detected
from the first row's keys (every later row must have the same format):

    chat               {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
                       the last message is the assistant's answer that is trained on
    alpaca             {"instruction": str, "input": str (optional), "output": str}
    prompt_completion  {"prompt": str | messages, "completion": str | [assistant message]}
    preference (DPO)   {"prompt": str | messages, "chosen": ..., "rejected": ...}

``alpaca``, ``prompt_completion`` and ``preference`` rows may carry a ``"system"`` string.

Every row becomes TRL's *conversational prompt/completion* shape (``prompt`` = messages up to
the answer, ``completion`` = ``[assistant message]``; ``chosen``/``rejected`` for DPO), so TRL
formats it with the base model's own chat template and puts the loss on the completion only.

Errors name their 1-based line number. Limits: :data:`MAX_FILE_BYTES`, :data:`MAX_ROWS`,
:data:`MAX_ROW_BYTES`, :data:`MAX_MESSAGES` per row.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

MAX_FILE_BYTES = 1 << 30
MAX_ROWS = 200_000
MAX_ROW_BYTES = 256 * 1024
MAX_MESSAGES = 64
MAX_REPORTED_ERRORS = 20
ROLES = ("system", "user", "assistant")

Message = dict[str, str]
Row = dict[str, Any]


class DataFormat(StrEnum):
    CHAT = "chat"
    ALPACA = "alpaca"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"


# Keys that identify each format, checked in this order (preference before prompt_completion:
# both have "prompt").
_SIGNATURES: tuple[tuple[DataFormat, frozenset[str]], ...] = (
    (DataFormat.CHAT, frozenset({"messages"})),
    (DataFormat.PREFERENCE, frozenset({"prompt", "chosen", "rejected"})),
    (DataFormat.ALPACA, frozenset({"instruction", "output"})),
    (DataFormat.PROMPT_COMPLETION, frozenset({"prompt", "completion"})),
)


@dataclass(frozen=True, slots=True)
class RowError:
    row: int  # 1-based line number in the file
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


class DataError(ValueError):
    """The data file is unusable; ``errors`` lists the bad rows by line number."""

    def __init__(self, path: Path, errors: list[RowError], *, more: int = 0) -> None:
        self.path = path
        self.errors = errors
        lines = [f"{path}: {len(errors) + more} bad row(s)"]
        lines += [f"  {error}" for error in errors]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class TrainingData:
    """A validated data file, converted to TRL conversational rows."""

    path: Path
    sha256: str
    format: DataFormat
    rows: list[Row]

    @property
    def is_preference(self) -> bool:
        return self.format is DataFormat.PREFERENCE

    def split(self, eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
        """Deterministic (train, eval) split; eval gets at least one row when asked for any."""
        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        n_eval = 0
        if eval_fraction > 0:
            n_eval = max(1, round(len(self.rows) * eval_fraction))
            if n_eval >= len(self.rows):
                raise DataError(
                    self.path,
                    [RowError(len(self.rows), "too few rows for a train split and an eval split")],
                )
        eval_idx = set(order[:n_eval])
        train = [row for i, row in enumerate(self.rows) if i not in eval_idx]
        held_out = [self.rows[i] for i in sorted(eval_idx)]
        return train, held_out


def load_training_data(
    path: Path, *, max_rows: int = MAX_ROWS, max_row_bytes: int = MAX_ROW_BYTES
) -> TrainingData:
    """Read, detect, validate and convert ``path``; raise :class:`DataError` naming bad rows."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, [RowError(0, "no such file")])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(path, [RowError(0, f"file is {size} bytes, the limit is {MAX_FILE_BYTES}")])

    digest = hashlib.sha256()
    errors: list[RowError] = []
    rows: list[Row] = []
    fmt: DataFormat | None = None
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            digest.update(raw)
            if not raw.strip():
                continue
            if len(rows) + len(errors) >= max_rows:
                raise DataError(path, [RowError(number, f"more than {max_rows} rows")])
            try:
                record = _parse_line(raw, max_row_bytes)
                if fmt is None:
                    fmt = detect_format(record)
                rows.append(convert_row(record, fmt))
            except ValueError as exc:
                errors.append(RowError(number, str(exc)))
    if not rows and not errors:
        errors.append(RowError(0, "the file has no rows"))
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        raise DataError(path, shown, more=len(errors) - len(shown))
    assert fmt is not None
    return TrainingData(path=path, sha256=digest.hexdigest(), format=fmt, rows=rows)


def detect_format(record: dict[str, Any]) -> DataFormat:
    keys = set(record)
    for fmt, required in _SIGNATURES:
        if required <= keys:
            return fmt
    raise ValueError(
        f"cannot tell the format from keys {sorted(keys)}; expected one of "
        + "; ".join(f"{fmt.value}: {sorted(req)}" for fmt, req in _SIGNATURES)
    )


def convert_row(record: dict[str, Any], fmt: DataFormat) -> Row:
    """One raw record of format ``fmt`` -> a TRL conversational row (raises ValueError)."""
    expected = dict(_SIGNATURES)[fmt]
    missing = sorted(expected - set(record))
    if missing:
        raise ValueError(f"missing {missing} (the file is {fmt.value} format, from its first row)")
    if fmt is DataFormat.CHAT:
        messages = _messages(record["messages"], "messages")
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        if not any(m["role"] == "user" for m in messages[:-1]):
            raise ValueError("messages need a user message before the answer")
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    system = _optional_text(record, "system")
    if fmt is DataFormat.ALPACA:
        instruction = _text(record["instruction"], "instruction")
        extra = _optional_text(record, "input")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        prompt = [*_system(system), {"role": "user", "content": user}]
        return {"prompt": prompt, "completion": _answer(record["output"], "output")}
    prompt = _prompt(record["prompt"], system)
    if fmt is DataFormat.PROMPT_COMPLETION:
        return {"prompt": prompt, "completion": _answer(record["completion"], "completion")}
    chosen = _answer(record["chosen"], "chosen")
    rejected = _answer(record["rejected"], "rejected")
    if chosen == rejected:
        raise ValueError("'chosen' and 'rejected' are the same answer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# --- field checks --------------------------------------------------------------------------------


def _parse_line(raw: bytes, max_row_bytes: int) -> dict[str, Any]:
    if len(raw) > max_row_bytes:
        raise ValueError(f"row is {len(raw)} bytes, the limit is {max_row_bytes}")
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"'{name}' is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # JSON's "\ud800" escape decodes to a lone surrogate: no tokenizer or UTF-8 file takes it.
        raise ValueError(
            f"'{name}' holds a lone surrogate (\\u{ord(value[exc.start]):04x}) at character "
            f"{exc.start}: text must be valid Unicode"
        ) from None
    return value


def _optional_text(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None or value == "":
        return ""
    return _text(value, name)


def _system(system: str) -> list[Message]:
    return [{"role": "system", "content": system}] if system else []


def _messages(value: object, name: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{name}' must be a non-empty list of messages")
    if len(value) > MAX_MESSAGES:
        raise ValueError(f"'{name}' has {len(value)} messages, the limit is {MAX_MESSAGES}")
    out: list[Message] = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValueError(f"{where} must be an object with only 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {list(ROLES)}, got {role!r}")
        if role == "system" and i != 0:
            raise ValueError(f"{where}: a system message may only come first")
        out.append({"role": role, "content": _text(message.get("content"), f"{where}.content")})
    return out


def _prompt(value: object, system: str) -> list[Message]:
    if isinstance(value, str):
        return [*_system(system), {"role": "user", "content": _text(value, "prompt")}]
    messages = _messages(value, "prompt")
    if messages[-1]["role"] != "user":
        raise ValueError("'prompt' messages must end with a user message")
    if system:
        if messages[0]["role"] == "system":
            raise ValueError("both 'system' and a system message in 'prompt'")
        messages = [*_system(system), *messages]
    return messages


def _answer(value: object, name: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, name)}]
    messages = _messages(value, name)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise ValueError(f"'{name}' must be a string or one assistant message")
    return messages
