"""gateway.observability.access_log: the access line's fields, both log formats, poll levels."""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import sys
from collections.abc import Iterator

import pytest

from gateway.inference.record import RequestInfo
from gateway.observability.access_log import (
    ACCESS_LOGGER,
    AccessLog,
    JsonLogFormatter,
    TextLogFormatter,
    access_fields,
    configure_logging,
    use_json,
)
from gateway.settings import LogFormat

TEXT_LINE = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (?P<level>[A-Z]+) (?P<message>.*)$"
)


def finished_info(path: str = "/v1/completions") -> RequestInfo:
    info = RequestInfo(request_id="abc", method="POST", path=path, started=10.0)
    info.first_byte, info.finished, info.status = 10.004, 10.0125, 200
    info.model, info.adapter, info.engine, info.stream = "legal", "legal", "engine-0", True
    info.prompt_tokens, info.completion_tokens = 5, 16
    return info


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging changes the root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_access_record_carries_fields_and_a_text_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        AccessLog().emit(finished_info())
    (record,) = caplog.records
    fields = access_fields(record)
    assert fields is not None
    assert fields["latency_ms"] == 12.5 and fields["ttfb_ms"] == 4.0
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (5, 16)
    assert "request_id=abc" in record.getMessage() and "latency_ms=12.5" in record.getMessage()


def test_disabled_level_writes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=ACCESS_LOGGER):
        AccessLog().emit(finished_info())
    assert caplog.records == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_polls_and_scrapes_are_logged_at_debug_only(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        AccessLog().emit(finished_info(path))
        AccessLog().emit(finished_info("/v1/models"))
    assert [access_fields(r)["path"] for r in caplog.records] == ["/v1/models"]  # type: ignore[index]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=ACCESS_LOGGER):
        AccessLog().emit(finished_info(path))
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG


def test_text_line_cannot_be_forged_by_a_newline_in_the_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression: with text logs a client-chosen ``model`` holding a newline wrote a second,
    forged access line. Values are quoted and escaped: one request, one line."""
    info = finished_info()
    info.model = 'x\n2026-01-01 00:00:00 INFO request_id=forged status=200 "\x1b[2J'
    info.path = "/v1/completions\r\nforged"
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        AccessLog().emit(info)
    line = caplog.records[0].getMessage()
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "request_id=abc" in line and r"model=\"x\n2026" not in line
    assert 'model="x\\n2026-01-01 00:00:00 INFO request_id=forged status=200 \\"\\x1b[2J"' in line


def test_text_format_parses_as_time_level_message_with_key_values(root_logging: None) -> None:
    stream = io.StringIO()
    assert configure_logging("INFO", LogFormat.TEXT, stream=stream) is False
    info = finished_info()
    info.model = "evil\nmodel = x"
    AccessLog().emit(info)
    logging.getLogger("gateway.x").warning("engine %s said %s", "e0", "two\nlines\x1b[2J")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    access, other = (TEXT_LINE.match(line) for line in lines)
    assert access is not None and other is not None
    assert access["level"] == "INFO" and other["level"] == "WARNING"
    pairs = dict(token.split("=", 1) for token in shlex.split(access["message"]))
    assert pairs["request_id"] == "abc" and pairs["status"] == "200"
    assert pairs["model"] == "evil\\nmodel = x"  # escaped, still one token
    assert other["message"] == "engine e0 said two\\nlines\\x1b[2J"


def test_json_format_parses_line_by_line(root_logging: None) -> None:
    stream = io.StringIO()
    assert configure_logging("INFO", LogFormat.JSON, stream=stream) is True
    info = finished_info()
    info.model = "evil\nmodel"
    AccessLog().emit(info)
    AccessLog().emit(finished_info("/readyz"))  # DEBUG: left out at INFO
    logging.getLogger("gateway.x").info("hello %s", "there")
    access, other = (json.loads(line) for line in stream.getvalue().splitlines())
    assert access["event"] == "request" and access["model"] == "evil\nmodel"
    assert access["latency_ms"] == 12.5 and isinstance(access["ts"], float)
    assert other["level"] == "INFO" and other["message"] == "hello there"


def test_auto_format_is_text_on_a_terminal_json_otherwise() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert use_json(LogFormat.AUTO, io.StringIO()) is True
    assert use_json(LogFormat.AUTO, Tty()) is False
    assert use_json(LogFormat.JSON, Tty()) is True
    assert use_json(LogFormat.TEXT, io.StringIO()) is False


def test_formatters_render_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        other = logging.LogRecord(
            "gateway.x", logging.ERROR, __file__, 1, "failed %s", ("it",), sys.exc_info()
        )
    payload = json.loads(JsonLogFormatter().format(other))
    assert payload["message"] == "failed it" and payload["level"] == "ERROR"
    assert "ValueError: boom" in payload["exc_info"]
    text = TextLogFormatter().format(other)
    assert TEXT_LINE.match(text.splitlines()[0]) and "ValueError: boom" in text
