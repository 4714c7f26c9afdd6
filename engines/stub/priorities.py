"""The stub's view of vLLM's per-request ``priority``: what it received, for tests.

vLLM takes ``priority`` (an integer, lower served earlier, 0 by default) on every
completion request and schedules by it when started with ``--scheduling-policy
priority``. The stub accepts the same flag and field and answers in arrival order
whatever they say (its answers take no shared resource to order), but it counts
every priority it received, so a test can tell which tier reached the engine:
``GET /stub/priorities`` answers ``{"policy": "fcfs" | "priority", "received":
{"<priority>": count}}`` (a request without the field counts under ``"none"``).
``POST /stub/reset`` does not clear it; ``DELETE /stub/priorities`` does.

vLLM refuses a ``priority`` that is not an integer (400); so does the stub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from starlette.types import Receive, Scope, Send

from engines.stub.asgi import JSON, send_bytes

PATH = "/stub/priorities"
Policy = Literal["fcfs", "priority"]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class PriorityLog:
    """Counts the ``priority`` of every completion request the stub received."""

    def __init__(self, policy: Policy = "fcfs") -> None:
        self.policy = policy
        self.received: dict[str, int] = {}

    def note(self, body: Any) -> str | None:
        """Count ``body``'s priority; the reason it is invalid, if it is (vLLM: 400)."""
        priority = body.get("priority") if isinstance(body, dict) else None
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
            return "priority must be an integer"
        name = "none" if priority is None else str(priority)
        self.received[name] = self.received.get(name, 0) + 1
        return None

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {PATH: {"GET": self._show, "DELETE": self._clear}}

    async def _show(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = {"policy": self.policy, "received": self.received}
        await send_bytes(send, 200, orjson.dumps(body), JSON)

    async def _clear(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.received = {}
        await self._show(scope, receive, send)
