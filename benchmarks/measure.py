"""What one request measured, and the tally of a whole run.

An :class:`Exchange` is filled by a client while a response arrives: the
client hands it body bytes as they come (``feed``) and calls ``finish`` once.
For an SSE response it counts content chunks, the gaps between them, the
time to the first one, the ``usage`` chunk and the closing ``[DONE]``. A
:class:`Recorder` keeps only the exchanges scheduled inside the measured
window (after the warm-up, before the end).

All times are ``time.perf_counter()`` seconds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from benchmarks.stats import Summary, summarize

_USAGE_KEY = b'"completion_tokens":'


class Exchange:
    """One request's timings and outcome; ``error`` is None for a complete, valid answer."""

    __slots__ = (
        "_body",
        "_pending",
        "chunks",
        "done",
        "end",
        "error",
        "first",
        "gaps",
        "last",
        "scheduled",
        "sent",
        "status",
        "stream",
        "tokens",
    )

    def __init__(self, scheduled: float, stream: bool, gaps: list[float]) -> None:
        self.scheduled = scheduled
        self.stream = stream
        self.gaps = gaps
        self.sent = scheduled
        self.status = 0
        self.first = 0.0
        self.last = 0.0
        self.end = 0.0
        self.chunks = 0
        self.tokens = -1
        self.done = False
        self.error: str | None = None
        self._pending = b""
        self._body: list[bytes] = []

    def feed(self, data: bytes, now: float) -> None:
        """Take the next piece of the (de-chunked) response body, received at ``now``."""
        if not self.stream:
            if not self._body:
                self.first = now
            self._body.append(data)
            return
        buf = self._pending + data if self._pending else data
        start = 0
        while (cut := buf.find(b"\n\n", start)) >= 0:
            self._event(buf[start:cut], now)
            start = cut + 2
        self._pending = buf[start:]

    def _event(self, raw: bytes, now: float) -> None:
        for line in raw.split(b"\n"):
            if not line.startswith(b"data:"):
                continue  # comments and other fields
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.error = self.error or "bad_chunk"
                continue
            self._chunk(chunk, now)

    def _chunk(self, chunk: Any, now: float) -> None:
        if not isinstance(chunk, dict):
            self.error = self.error or "bad_chunk"
            return
        if "error" in chunk:
            self.error = self.error or "stream_error_event"
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.tokens = usage["completion_tokens"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if text:
                break
        else:
            return  # a role, finish or usage chunk: no content
        self.chunks += 1
        if self.first:
            self.gaps.append(now - self.last)
        else:
            self.first = now
        self.last = now

    def finish(self, now: float, error: str | None = None) -> None:
        """Close the exchange; ``error`` names a transport failure seen by the client."""
        self.end = now
        if error is not None:
            self.error = error
        elif self.status != 200:
            self.error = f"http_{self.status}"
        elif self.stream:
            if self._pending.strip():
                self.error = self.error or "partial_event"
            elif not self.done:
                self.error = self.error or "missing_done"
        else:
            body = b"".join(self._body)
            at = body.find(_USAGE_KEY)
            if at >= 0:
                digits = body[at + len(_USAGE_KEY) : at + len(_USAGE_KEY) + 12].lstrip()
                end = len(digits) - len(digits.lstrip(b"0123456789"))
                self.tokens = int(digits[:end]) if end else -1
        if self.tokens < 0:
            self.tokens = self.chunks


@dataclass(slots=True)
class Recorder:
    """Collects the exchanges scheduled within ``[window_start, window_end)``."""

    window_start: float
    window_end: float
    e2e: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    ok: int = 0
    tokens: int = 0
    chunks: int = 0
    outside: int = 0
    stopped_at: float | None = None  # when a request-count bound ended the run early
    last_end: float = 0.0
    chunk_counts: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def exchange(self, scheduled: float, stream: bool) -> Exchange:
        """A fresh exchange; its chunk gaps go to the run's samples if it will count."""
        inside = self.window_start <= scheduled < self.window_end
        return Exchange(scheduled, stream, self.itl if inside else [])

    def record(self, ex: Exchange) -> None:
        """Count ``ex`` if it was scheduled in the window, or if it never finished at all.

        A request still unanswered when the run ends is an error of the run even
        when it was sent during the warm-up: a hang must not vanish from the figures.
        """
        if not self.window_start <= ex.scheduled < self.window_end and ex.error != "timeout":
            self.outside += 1
            return
        if ex.error is not None:
            self.errors[ex.error] += 1
            return
        self.ok += 1
        self.last_end = max(self.last_end, ex.end)
        self.e2e.append(ex.end - ex.scheduled)
        self.lag.append(ex.sent - ex.scheduled)
        self.service.append(ex.end - ex.sent)
        self.tokens += ex.tokens
        if ex.stream:
            self.chunks += ex.chunks
            self.chunk_counts[ex.chunks] += 1
            if ex.first:
                self.ttft.append(ex.first - ex.scheduled)


@dataclass(slots=True)
class RunResult:
    """The figures of one load run; ``samples`` keeps the raw latencies for plots."""

    label: str
    settings: dict[str, Any]
    duration_s: float
    ok: int
    errors: dict[str, int]
    rps: float
    tokens_per_s: float
    e2e: Summary
    ttft: Summary
    itl: Summary
    send_lag: Summary
    service: Summary
    chunks: int
    chunks_per_request: dict[int, int]
    warmup_or_late: int
    samples: dict[str, list[float]] = field(repr=False)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        """Every figure (latencies in ms), without the raw samples."""
        return {
            "label": self.label,
            "settings": self.settings,
            "duration_s": self.duration_s,
            "ok": self.ok,
            "errors": self.errors,
            "error_count": self.error_count,
            "rps": self.rps,
            "tokens_per_s": self.tokens_per_s,
            "latency_ms": {
                "e2e": self.e2e.to_dict(),
                "ttft": self.ttft.to_dict(),
                "itl": self.itl.to_dict(),
                "send_lag": self.send_lag.to_dict(),
                "service": self.service.to_dict(),
            },
            "chunks": self.chunks,
            "chunks_per_request": {str(k): v for k, v in sorted(self.chunks_per_request.items())},
            "excluded_warmup_or_late": self.warmup_or_late,
        }


def result_of(label: str, settings: dict[str, Any], rec: Recorder) -> RunResult:
    """Summarize a finished recorder."""
    end = rec.window_end
    if rec.stopped_at is not None:  # the count bound hit first: measure up to the last answer
        end = min(end, max(rec.stopped_at, rec.last_end))
    duration = max(end - rec.window_start, 1e-9)
    return RunResult(
        label=label,
        settings=settings,
        duration_s=duration,
        ok=rec.ok,
        errors=dict(rec.errors),
        rps=rec.ok / duration,
        tokens_per_s=rec.tokens / duration,
        e2e=summarize(rec.e2e),
        ttft=summarize(rec.ttft),
        itl=summarize(rec.itl),
        send_lag=summarize(rec.lag),
        service=summarize(rec.service),
        chunks=rec.chunks,
        chunks_per_request=dict(rec.chunk_counts),
        warmup_or_late=rec.outside,
        samples={"e2e": rec.e2e, "ttft": rec.ttft, "itl": rec.itl},
    )
