"""Logging set-up, and the one-line-per-request log of ``server.log_format: json``.

``text`` (the default) keeps the plain ``time logger message`` lines and logs no line
per request. ``json`` writes every record as one JSON object per line (``ts``,
``level``, ``logger``, ``message``, plus ``exc`` for a traceback), uvicorn's own
records included, and one record per finished request on the ``vgate.request``
logger whose fields are listed in :meth:`RequestLog.write`. A key's name is logged,
never the key.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.observability.timeline import RequestRecord, Timeline

TEXT_FORMAT = "%(asctime)s %(name)s %(message)s"
REQUEST_LOGGER = "vgate.request"


class JsonFormatter(logging.Formatter):
    """A record as one JSON line; a request's fields (``extra={"request": {...}}``) merge in."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str, log_format: str) -> None:
    """The root logger's handler for ``log_format`` (text or json) at ``level``."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def uvicorn_log_config(log_format: str) -> dict[str, Any] | None:
    """What uvicorn should be given as ``log_config``: None (its own, for text) or, for
    json, a config that leaves its loggers to propagate to the root's JSON handler."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


class RequestLog:
    """Writes one INFO record per finished request on ``vgate.request``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(REQUEST_LOGGER)

    def write(self, record: RequestRecord, timeline: Timeline, elapsed_s: float) -> None:
        """``request_id``, ``key``, ``route``, ``model``, ``variant``, ``engine``,
        ``status``, ``error``, ``cache``, ``stream``, ``input_tokens``,
        ``output_tokens`` and ``timings_ms`` (``total``, ``auth``, ``limit``, ``cache``,
        ``queue``, ``upstream``, ``ttft`` as reached; failed attempts' engines under
        ``failovers``)."""
        if not self._log.isEnabledFor(logging.INFO):
            return
        timings = timeline.durations_ms()
        timings["total"] = round(elapsed_s * 1000.0, 3)
        if record.first_token:
            timings["ttft"] = round((record.first_token - timeline.begun) * 1000.0, 3)
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "key": record.key,
            "route": record.label,
            "model": record.model,
            "variant": record.variant,
            "engine": record.engine,
            "status": record.status,
            "error": record.error,
            "cache": record.cache,
            "stream": record.stream,
            "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens,
            "timings_ms": timings,
        }
        failovers = [
            {"engine": a.engine, "failure": a.failure}
            for a in timeline.attempts or ()
            if a.failure is not None
        ]
        if failovers:
            fields["failovers"] = failovers
        self._log.info(
            "%s %s %s %d", record.request_id, record.label, record.model, record.status,
            extra={"request": fields},
        )  # fmt: skip
