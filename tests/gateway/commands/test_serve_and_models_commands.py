"""``lora-gateway serve`` and ``models`` command lines, fast (no engine). The real serve run is
tests/integration/test_serve.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import build_cli
from gateway.commands.serve import sdk_example
from gateway.engines.basemodels import MARKER_FILE, RECIPE_VERSIONS, TINY

runner = CliRunner()


def test_models_prepare_skips_a_complete_build(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / MARKER_FILE).write_text(f'{{"recipe": "tiny", "version": {RECIPE_VERSIONS[TINY]}}}')
    result = runner.invoke(build_cli(), ["models", "prepare", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "already prepared" in result.output


def test_models_prepare_rejects_unknown_names(tmp_path: Path) -> None:
    result = runner.invoke(build_cli(), ["models", "prepare", "llama-70b", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown model 'llama-70b'" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-lora-rank", "7"], "max_lora_rank"),
        (["--port", "70000"], "port"),
        (["--max-loras", "0"], "max_loras"),
        (["--api-key", ""], "api_keys"),
        (["--api-key", "  "], "empty or whitespace-only"),
    ],
)
def test_serve_rejects_bad_flags_before_starting_anything(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = runner.invoke(build_cli(), ["serve", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "logs").exists()


def test_serve_reports_an_unknown_base_model(tmp_path: Path) -> None:
    result = runner.invoke(
        build_cli(),
        [
            "serve",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
            "--base-model",
            str(tmp_path / "missing"),
        ],
    )
    assert result.exit_code == 2
    assert "neither a known name" in result.output


def test_serve_reports_a_bad_engine_url(tmp_path: Path) -> None:
    result = runner.invoke(
        build_cli(), ["serve", "--data-dir", str(tmp_path), "--engine-url", "localhost:8001"]
    )
    assert result.exit_code == 2
    assert "must be http(s)://HOST[:PORT]" in result.output


def test_sdk_example_is_valid_python_with_the_given_values() -> None:
    text = sdk_example("http://127.0.0.1:8000", "smollm2-135m-instruct", keys_required=False)
    code = text[text.index("from openai") :]
    ast.parse(code)
    assert 'base_url="http://127.0.0.1:8000/v1"' in code
    assert 'model="smollm2-135m-instruct"' in code and 'api_key="not-needed"' in code


def test_sdk_example_never_prints_a_key_given_with_api_key() -> None:
    """Regression: ``serve --api-key K`` printed K in the SDK example (terminal scrollback,
    CI logs). The example reads the key from OPENAI_API_KEY instead."""
    text = sdk_example("http://127.0.0.1:8000", "m", keys_required=True)
    code = text[text.index("from openai") :]
    ast.parse(code)
    assert "api_key=" not in code and "OPENAI_API_KEY" in text
