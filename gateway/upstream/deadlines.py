"""Timeouts of one model's requests to its engines, as plain numbers (the upstream
client makes its own transport objects from them).

* ``connect_s``: opening a connection (a failure here goes to another engine);
* ``ttft_s``: streams: from sending the request to the first event;
* ``idle_s``: streams: the longest gap between two chunks;
* ``total_s``: the whole response, streamed or not.

A non-streaming request waits for its whole answer for ``total_s`` if set, else
``ttft_s`` if set, else ``idle_s`` (vLLM sends nothing before the answer is
done). Each one aborts the upstream request; the client gets a 504
``upstream_timeout`` naming the limit (its value and the setting it comes from:
:meth:`Deadlines.named`), or, once its stream has begun, an SSE error event and
``[DONE]``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from gateway.config.models import ModelTimeouts
from gateway.config.upstream import UpstreamSettings

Limit = Literal["connect_s", "ttft_s", "idle_s", "total_s"]

UPSTREAM_SETTINGS: dict[Limit, str] = {
    "connect_s": "connect_timeout_s",
    "ttft_s": "ttft_timeout_s",
    "idle_s": "read_timeout_s",
    "total_s": "total_timeout_s",
}
"""The ``upstream`` section's setting behind each limit (a model's own ``timeouts``
use the limit's name)."""


@dataclass(frozen=True, slots=True)
class Deadlines:
    connect_s: float
    ttft_s: float | None
    idle_s: float
    total_s: float | None
    model: str | None = field(default=None, compare=False)
    """The model whose own ``timeouts`` set the limits in ``own``. Neither field takes
    part in equality or the hash (the aiohttp client keys its timeouts on the numbers)."""
    own: frozenset[Limit] = field(default=frozenset(), compare=False)
    """The limits the model's own ``timeouts`` set (the others are the ``upstream``
    section's): only error messages read it."""

    @classmethod
    def of(
        cls, upstream: UpstreamSettings, own: ModelTimeouts | None, model: str | None = None
    ) -> Deadlines:
        mine = own or ModelTimeouts()
        return cls(
            connect_s=mine.connect_s or upstream.connect_timeout_s,
            ttft_s=mine.ttft_s or upstream.ttft_timeout_s,
            idle_s=mine.idle_s or upstream.read_timeout_s,
            total_s=mine.total_s or upstream.total_timeout_s,
            model=model,
            own=frozenset(limit for limit in UPSTREAM_SETTINGS if getattr(mine, limit)),
        )

    @property
    def first_s(self) -> float:
        """How long a stream may wait for its head and first event: ``ttft_s`` when set
        (longer or shorter than ``idle_s``), else ``idle_s``, the longest gap."""
        return self.ttft_s or self.idle_s

    @property
    def answer_s(self) -> float:
        """How long a non-streaming request waits for its answer."""
        return self.total_s or self.ttft_s or self.idle_s

    def answer_name(self) -> str:
        """:meth:`named` for the limit a non-streaming request waits by."""
        if self.total_s:
            return self.named("total_s")
        if self.ttft_s:
            return self.named("ttft_s")
        return self.named("idle_s")

    def named(self, limit: Limit) -> str:
        """A limit as an error message gives it: its value and the setting it comes
        from, ``30 s (upstream.ttft_timeout_s)`` or ``0.4 s (timeouts.ttft_s of model
        `m`)``. Built only when a limit has been exceeded."""
        value = getattr(self, limit)
        if limit not in self.own:
            where = f"upstream.{UPSTREAM_SETTINGS[limit]}"
        elif self.model is None:
            where = f"the model's timeouts.{limit}"
        else:
            where = f"timeouts.{limit} of model `{self.model}`"
        return f"{value:g} s ({where})"


def stream_timeout(deadlines: Deadlines, total: bool) -> str:
    """What a stream's 504 or error event says when a deadline passes mid-stream: the
    total (``total`` true) or the longest gap, with the value and its setting."""
    if total:
        limit = "its total deadline" if deadlines.total_s is None else deadlines.named("total_s")
        return f"the engine did not finish within {limit}"
    return f"the engine sent nothing for longer than {deadlines.named('idle_s')}"


BUSY_AHEAD_S = 0.005
"""A wait for a pooled connection ends this long before the request's own deadline
(uvloop's timers count milliseconds), so that a busy engine is answered as busy
(:class:`gateway.upstream.transport.EngineBusy`: 503 ``overloaded``), not as the
engine's timeout (504, held against its breaker). Both engine clients."""


def first_event_wait_until(deadlines: Deadlines) -> float | None:
    """When a stream's wait for a pooled connection must end (loop time): before the
    forwarder's first-event deadline (``ttft_s``, or ``total_s`` if sooner), when one is
    set."""
    limits = [limit for limit in (deadlines.ttft_s, deadlines.total_s) if limit]
    if not limits:
        return None
    return asyncio.get_running_loop().time() + min(limits) - BUSY_AHEAD_S
