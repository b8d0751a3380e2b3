"""adapters/ stands alone: no module of it imports the gateway (statically or at import time)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_adapters_module_imports_gateway() -> None:
    modules = sorted(ADAPTERS.rglob("*.py"))
    assert len(modules) >= 6
    offenders = {
        str(path.relative_to(ADAPTERS)): sorted(
            name for name in _imported_modules(path) if name.split(".")[0] == "gateway"
        )
        for path in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_every_adapters_module_loads_no_gateway_module() -> None:
    names = [
        "adapters." + ".".join(p.relative_to(ADAPTERS).with_suffix("").parts)
        for p in sorted(ADAPTERS.rglob("*.py"))
        if p.name != "__init__.py"
    ]
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
