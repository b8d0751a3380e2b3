"""Data formats: detection, conversion to TRL rows, and bad rows named by line number."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from trainer.data import DataError, DataFormat, load_training_data

Jsonl = Callable[..., Path]
USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris."}


def test_chat_rows_train_on_the_last_assistant_message(jsonl: Jsonl) -> None:
    system = {"role": "system", "content": "Be brief."}
    earlier = [USER, {"role": "assistant", "content": "Paris."}]
    data = load_training_data(
        jsonl(
            [
                {"messages": [system, USER, ANSWER]},
                {"messages": [*earlier, {"role": "user", "content": "And Spain?"}, ANSWER]},
            ]
        )
    )
    assert data.format is DataFormat.CHAT
    assert data.rows[0] == {"prompt": [system, USER], "completion": [ANSWER]}
    assert data.rows[1]["prompt"][:2] == earlier  # earlier turns are context, not trained on
    assert data.rows[1]["completion"] == [ANSWER]


def test_alpaca_rows_join_instruction_and_input(jsonl: Jsonl) -> None:
    data = load_training_data(
        jsonl(
            [
                {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
                {"instruction": "Say hi.", "output": "Hi", "system": "Be kind."},
            ]
        )
    )
    assert data.format is DataFormat.ALPACA
    assert data.rows[0] == {
        "prompt": [{"role": "user", "content": "Translate.\n\nBonjour"}],
        "completion": [{"role": "assistant", "content": "Hello"}],
    }
    assert data.rows[1]["prompt"][0] == {"role": "system", "content": "Be kind."}


def test_prompt_completion_accepts_strings_and_messages(jsonl: Jsonl) -> None:
    data = load_training_data(
        jsonl(
            [
                {"prompt": "What is the capital of France?", "completion": "Paris."},
                {"prompt": [USER], "completion": [ANSWER]},
            ]
        )
    )
    assert data.format is DataFormat.PROMPT_COMPLETION
    assert data.rows[0] == data.rows[1] == {"prompt": [USER], "completion": [ANSWER]}


def test_preference_rows(jsonl: Jsonl) -> None:
    data = load_training_data(jsonl([{"prompt": "Q?", "chosen": "Good.", "rejected": "Bad."}]))
    assert data.format is DataFormat.PREFERENCE
    assert data.is_preference
    assert data.rows[0] == {
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "assistant", "content": "Good."}],
        "rejected": [{"role": "assistant", "content": "Bad."}],
    }


def test_sha256_is_of_the_file_bytes(jsonl: Jsonl) -> None:
    path = jsonl([{"prompt": "a", "completion": "b"}])
    assert load_training_data(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (  # chat: the last message must be the answer; roles are checked
            [
                {"messages": [USER, ANSWER]},
                {"messages": [USER]},
                {"messages": [USER, {"role": "robot", "content": "x"}]},
                {"messages": [USER, {"role": "system", "content": "late"}, ANSWER]},
                {"messages": []},
            ],
            [
                "row 2: the last message must be the assistant's answer",
                "row 3: messages[1].role must be one of",
                "row 4: messages[1]: a system message may only come first",
                "row 5: 'messages' must be a non-empty list",
            ],
        ),
        (  # alpaca: output required and non-empty, strings only
            [
                {"instruction": "Do it.", "output": "Done."},
                {"instruction": "Do it.", "input": "x"},
                {"instruction": "Do it.", "output": "   "},
                {"instruction": 3, "output": "Done."},
            ],
            [
                "row 2: missing ['output'] (the file is alpaca format",
                "row 3: 'output' is empty",
                "row 4: 'instruction' must be a string, got int",
            ],
        ),
        (  # prompt/completion
            [
                {"prompt": "Q?", "completion": "A."},
                {"prompt": "Q?", "completion": ""},
                {"prompt": [ANSWER], "completion": "A."},
                {"prompt": "Q?", "completion": [USER]},
            ],
            [
                "row 2: 'completion' is empty",
                "row 3: 'prompt' messages must end with a user message",
                "row 4: 'completion' must be a string or one assistant message",
            ],
        ),
        (  # preference
            [
                {"prompt": "Q?", "chosen": "A.", "rejected": "B."},
                {"prompt": "Q?", "chosen": "A.", "rejected": "A."},
                {"prompt": "Q?", "chosen": "A."},
            ],
            [
                "row 2: 'chosen' and 'rejected' are the same answer",
                "row 3: missing ['rejected']",
            ],
        ),
    ],
    ids=["chat", "alpaca", "prompt_completion", "preference"],
)
def test_bad_rows_are_named_by_line(jsonl: Jsonl, rows: list[object], expected: list[str]) -> None:
    with pytest.raises(DataError) as caught:
        load_training_data(jsonl(rows))
    assert [error.row for error in caught.value.errors] == list(range(2, len(rows) + 1))
    message = str(caught.value)
    for line in expected:
        assert line in message


def test_broken_lines_keep_their_line_numbers(jsonl: Jsonl) -> None:
    rows: list[object] = [
        {"prompt": "Q?", "completion": "A."},
        "",  # blank lines are skipped but still counted
        "{not json",
        "[1, 2]",
        {"instruction": "other format", "output": "x"},
    ]
    with pytest.raises(DataError) as caught:
        load_training_data(jsonl(rows))
    errors = {error.row: error.message for error in caught.value.errors}
    assert set(errors) == {3, 4, 5}
    assert errors[3].startswith("not valid JSON")
    assert errors[4] == "expected a JSON object, got list"
    assert "missing ['completion', 'prompt']" in errors[5]


def test_unknown_format_is_refused(jsonl: Jsonl) -> None:
    with pytest.raises(DataError, match=r"row 1: cannot tell the format from keys \['text'\]"):
        load_training_data(jsonl([{"text": "plain"}]))


def test_limits(jsonl: Jsonl, tmp_path: Path) -> None:
    row = {"prompt": "Q?", "completion": "A."}
    with pytest.raises(DataError, match="row 4: more than 3 rows"):
        load_training_data(jsonl([row] * 5), max_rows=3)
    with pytest.raises(DataError, match=r"row 2: row is \d+ bytes, the limit is 100"):
        load_training_data(
            jsonl([row, {"prompt": "Q" * 200, "completion": "A"}]), max_row_bytes=100
        )
    with pytest.raises(DataError, match="no such file"):
        load_training_data(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="the file has no rows"):
        load_training_data(jsonl(["", ""]))


def test_many_bad_rows_are_summarised(jsonl: Jsonl) -> None:
    rows: list[object] = [{"prompt": "Q?", "completion": "A."}] + ["{"] * 30
    with pytest.raises(DataError) as caught:
        load_training_data(jsonl(rows))
    assert len(caught.value.errors) == 20
    assert "30 bad row(s)" in str(caught.value)
    assert "... and 10 more" in str(caught.value)


def test_split_is_deterministic_and_disjoint(jsonl: Jsonl) -> None:
    data = load_training_data(jsonl([{"prompt": f"Q{i}?", "completion": "A."} for i in range(40)]))
    train, held_out = data.split(0.1, seed=7)
    assert (len(train), len(held_out)) == (36, 4)
    assert data.split(0.1, seed=7) == (train, held_out)
    assert data.split(0.1, seed=8)[1] != held_out
    prompts = {row["prompt"][0]["content"] for row in train}
    assert prompts.isdisjoint(row["prompt"][0]["content"] for row in held_out)
    assert data.split(0.0, seed=7) == (data.rows, [])
    tiny = load_training_data(jsonl([{"prompt": "Q?", "completion": "A."}]))
    with pytest.raises(DataError, match="too few rows"):
        tiny.split(0.1, seed=7)


def test_lone_surrogates_are_refused_naming_the_row(jsonl: Jsonl) -> None:
    # json.dumps writes "\ud800" as an escape that json.loads turns into a lone surrogate:
    # no tokenizer can encode it, and a UTF-8 writer fails on it later, far from the data.
    rows: list[object] = [
        {"prompt": "Q?", "completion": "A."},
        {"prompt": "bad \ud800 prompt", "completion": "A."},
        {"prompt": "Q?", "completion": "A.", "system": "sys \udfff"},
        {"prompt": [{"role": "user", "content": "hi \udc80"}], "completion": "A."},
        {"prompt": "Q?", "completion": "pair \ud83d\ude00 is fine"},
    ]
    with pytest.raises(DataError) as caught:
        load_training_data(jsonl(rows))
    errors = {error.row: error.message for error in caught.value.errors}
    assert set(errors) == {2, 3, 4}
    assert "'prompt' holds a lone surrogate (\\ud800) at character 4" in errors[2]
    assert "'system' holds a lone surrogate (\\udfff)" in errors[3]
    assert "'prompt[0].content' holds a lone surrogate (\\udc80)" in errors[4]
    assert errors[2].endswith("text must be valid Unicode")
