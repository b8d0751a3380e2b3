"""The gateway process never imports torch, transformers or vllm (they cost seconds and GBs,
and only the engine child, the model builders and the trainer need them)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "vllm")
GATEWAY_MODULES = (
    "gateway.app",
    "gateway.cli",
    "gateway.commands.serve",
    "gateway.commands.models",
    "gateway.basemodels",
    "gateway.engines.factory",
    "gateway.engines.managed",
    "gateway.engines.remote",
    "gateway.engines.cpu_lora_fix",
)


def test_gateway_modules_import_no_heavy_packages() -> None:
    missing = [name for name in GATEWAY_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"not written yet: {missing}")
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(GATEWAY_MODULES)!r}:\n"
        "    importlib.import_module(name)\n"
        "import gateway.cli\n"
        "gateway.cli.build_cli()\n"
        f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
