"""The gateway process never imports torch, transformers or vllm (they cost seconds and GBs,
and only the engine child, the model builders and the trainer need them). Starting the app's
lifespan is checked too, in tests/gateway/test_app.py."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "transformers", "vllm")
GATEWAY_MODULES = (
    "gateway.app",
    "gateway.cli",
    "gateway.commands.serve",
    "gateway.commands.models",
    "gateway.commands.adapters",
    "gateway.basemodels",
    "gateway.engines.factory",
    "gateway.engines.managed",
    "gateway.engines.remote",
    "gateway.engines.cpu_lora_fix",
    "gateway.adapter_startup",
    "gateway.lifecycle",
    "gateway.metrics",
    "gateway.engine_metrics",
    "gateway.proxy",
    "adapters.registry",
    "adapters.validation",
)


def test_gateway_modules_import_no_heavy_packages() -> None:
    """Every module the ``serve`` process loads, in a fresh interpreter; none may be missing."""
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
