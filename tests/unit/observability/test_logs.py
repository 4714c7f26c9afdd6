"""JSON log records: one object per line, a request's fields merged in."""

from __future__ import annotations

import json
import logging

import pytest

from gateway.observability.logs import JsonFormatter, RequestLog, uvicorn_log_config
from gateway.observability.timeline import RequestRecord, Timeline


def test_a_record_is_one_json_line() -> None:
    record = logging.LogRecord("vgate.app", logging.WARNING, __file__, 1, "a %s", ("b\nc",), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert (parsed["level"], parsed["logger"]) == ("warning", "vgate.app")
    assert parsed["message"] == "a b\nc"


def test_a_request_line_carries_its_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vgate.request")
    record = RequestRecord("req-9", "chat_completions")
    record.key, record.model, record.status, record.engine = "team", "m", 429, None
    timeline = Timeline(5.0)
    timeline.authed = 5.002
    RequestLog().write(record, timeline, 0.01)
    [logged] = [r for r in caplog.records if r.name == "vgate.request"]
    fields = json.loads(JsonFormatter().format(logged))
    assert (fields["request_id"], fields["status"], fields["key"]) == ("req-9", 429, "team")
    assert fields["timings_ms"] == {"auth": 2.0, "total": 10.0}


def test_uvicorn_keeps_its_own_logging_for_text() -> None:
    assert uvicorn_log_config("text") is None
    config = uvicorn_log_config("json")
    assert config is not None and config["loggers"]["uvicorn.error"]["propagate"] is True
