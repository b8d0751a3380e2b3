"""gateway.inference.record: the access line's fields and the JSON log formatter."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from gateway.inference.record import RequestInfo
from gateway.observability.access_log import ACCESS_LOGGER, AccessLog, JsonLogFormatter


def finished_info() -> RequestInfo:
    info = RequestInfo(request_id="abc", method="POST", path="/v1/completions", started=10.0)
    info.first_byte, info.finished, info.status = 10.004, 10.0125, 200
    info.model, info.adapter, info.engine, info.stream = "legal", "legal", "engine-0", True
    info.prompt_tokens, info.completion_tokens = 5, 16
    return info


def test_access_line_is_one_json_object(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        AccessLog(json_lines=True).emit(finished_info())
    (record,) = caplog.records
    line = json.loads(record.getMessage())
    assert line["latency_ms"] == 12.5 and line["ttfb_ms"] == 4.0
    assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 16)
    assert line["request_id"] == "abc" and line["adapter"] == "legal"


def test_text_lines_and_disabled_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        AccessLog(json_lines=False).emit(finished_info())
    assert "request_id=abc" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ACCESS_LOGGER):
        AccessLog().emit(finished_info())
    assert caplog.records == []


def test_json_formatter_wraps_other_records_and_keeps_access_lines() -> None:
    formatter = JsonLogFormatter()
    access = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, '{"a":1}', None, None)
    assert formatter.format(access) == '{"a":1}'
    try:
        raise ValueError("boom")
    except ValueError:
        other = logging.LogRecord(
            "gateway.x", logging.ERROR, __file__, 1, "failed %s", ("it",), sys.exc_info()
        )
    payload = json.loads(formatter.format(other))
    assert payload["message"] == "failed it" and payload["level"] == "ERROR"
    assert "ValueError: boom" in payload["exc_info"]
