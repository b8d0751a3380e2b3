"""The legal-lora demo dataset: deterministic, valid chat rows, one fixed answer template."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from trainer.data import DataFormat, load_training_data

SCRIPT = Path(__file__).parents[2] / "examples" / "legal" / "make_dataset.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("legal_make_dataset", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_committed_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    script = load_script()
    assert script.main(["--check"]) == 0  # examples/legal/legal.jsonl is up to date
    out = tmp_path / "legal.jsonl"
    assert script.main(["--out", str(out)]) == 0
    assert out.read_bytes() == script.DEFAULT_OUT.read_bytes()


def test_rows_are_chat_with_the_fixed_template() -> None:
    script = load_script()
    data = load_training_data(script.DEFAULT_OUT)
    assert data.format is DataFormat.CHAT
    assert len(data.rows) == len(script.TOPICS) * len(script.QUESTIONS) == 200
    questions = set()
    for row in data.rows:
        (user,) = row["prompt"]
        (reply,) = row["completion"]
        questions.add(user["content"])
        lines = reply["content"].split("\n")
        assert lines[0] == "LEGAL ANALYSIS"
        assert [line.split(":")[0] for line in lines[1:5]] == [
            "Issue",
            "Rule",
            "Application",
            "Conclusion",
        ]
        assert lines[5] == script.DISCLAIMER
    assert len(questions) == 200
    # examples/legal/ask.py asks about a topic the data does not cover: only the style transfers
    assert not any("raise the rent" in question for question in questions)
