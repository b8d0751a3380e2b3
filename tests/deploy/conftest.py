"""Fixtures of the deploy/ checks: the Prometheus tools.

``promtool`` and ``prometheus`` come from Debian's ``prometheus`` package, installed by
``scripts/ensure-prometheus.sh`` (part of ``make test``). A missing tool fails the test with the
command to run, rather than skipping it: CI must not pass without these checks.
"""

from __future__ import annotations

import shutil

import pytest


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/ensure-prometheus.sh (as root)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_tool("promtool")
