"""Names and request bodies shared by the in-process gateway tests (see conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.observability.access_log import access_fields

BASE = "base-model"
ADAPTER = "style"


def chat(model: str = BASE, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


def completion(model: str = BASE, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "hello", **extra}


async def access_lines(caplog: pytest.LogCaptureFixture, *request_ids: str) -> list[dict[str, Any]]:
    """The access-log lines of these requests, in that order, once all were written (2 s max).

    By id: the module's gateway may still log the end of an earlier test's stream.
    """
    found: dict[str, dict[str, Any]] = {}
    for _ in range(100):
        for record in caplog.records:
            line = access_fields(record)
            if line is not None:
                found[line["request_id"]] = line
        if all(request_id in found for request_id in request_ids):
            return [found[request_id] for request_id in request_ids]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no access-log line for some of {request_ids}: {sorted(found)}")
