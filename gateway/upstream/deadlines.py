"""Timeouts of one model's requests to its engines, as plain numbers (the upstream
client makes its own transport objects from them).

* ``connect_s``: opening a connection (a failure here goes to another engine);
* ``ttft_s``: streams: from sending the request to the first event;
* ``idle_s``: streams: the longest gap between two chunks;
* ``total_s``: the whole response, streamed or not.

A non-streaming request waits for its whole answer for ``total_s`` if set, else
``ttft_s`` if set, else ``idle_s`` (vLLM sends nothing before the answer is
done). Each one aborts the upstream request; the client gets a 504
``upstream_timeout`` naming the limit, or, once its stream has begun, an SSE
error event and ``[DONE]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config.models import ModelTimeouts
from gateway.config.sections import UpstreamSettings


@dataclass(frozen=True, slots=True)
class Deadlines:
    connect_s: float
    ttft_s: float | None
    idle_s: float
    total_s: float | None

    @classmethod
    def of(cls, upstream: UpstreamSettings, own: ModelTimeouts | None) -> Deadlines:
        mine = own or ModelTimeouts()
        return cls(
            connect_s=mine.connect_s or upstream.connect_timeout_s,
            ttft_s=mine.ttft_s or upstream.ttft_timeout_s,
            idle_s=mine.idle_s or upstream.read_timeout_s,
            total_s=mine.total_s or upstream.total_timeout_s,
        )

    @property
    def answer_s(self) -> float:
        """How long a non-streaming request waits for its answer."""
        return self.total_s or self.ttft_s or self.idle_s

    def answer_name(self) -> str:
        if self.total_s:
            return f"total_s = {self.total_s:g} s"
        if self.ttft_s:
            return f"ttft_s = {self.ttft_s:g} s"
        return f"idle_s = {self.idle_s:g} s"
