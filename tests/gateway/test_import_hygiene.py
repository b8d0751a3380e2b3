"""The gateway process never imports torch, transformers or vllm (they cost seconds and GBs,
and only the engine child, the model builders and the trainer need them). Starting the app's
lifespan is checked too, in tests/gateway/api/test_app.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "vllm")


def _all_modules() -> tuple[str, ...]:
    """Every module of the packages the ``serve`` process loads from (found on disk, so a new
    module is covered the day it is added)."""
    root = Path(__file__).resolve().parents[2]
    names = []
    for package in ("gateway", "adapters"):
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return tuple(names)


GATEWAY_MODULES = _all_modules()


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
