"""The W3C ``traceparent`` of every completion request the stub received, for tests.

vLLM started with ``--otlp-traces-endpoint`` continues the trace named by an incoming
``traceparent``; the stub exports nothing, but keeps the last :data:`KEPT` values it
received (``null`` for a request without one) so a test can check that a gateway
passed the client's trace on: ``GET /stub/traceparents`` answers ``{"received":
[...]}``, oldest first; ``DELETE /stub/traceparents`` empties it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import Receive, Scope, Send

from engines.stub.asgi import JSON, send_bytes

PATH = "/stub/traceparents"
KEPT = 100
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]


class TraceparentLog:
    """The last :data:`KEPT` ``traceparent`` headers of completion requests."""

    def __init__(self) -> None:
        self.received: deque[str | None] = deque(maxlen=KEPT)

    def note(self, headers: list[tuple[bytes, bytes]]) -> None:
        value = next((v for name, v in headers if name.lower() == b"traceparent"), None)
        self.received.append(None if value is None else value[:256].decode("latin-1"))

    def routes(self) -> dict[str, dict[str, Handler]]:
        return {PATH: {"GET": self._show, "DELETE": self._clear}}

    async def _show(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_bytes(send, 200, orjson.dumps({"received": list(self.received)}), JSON)

    async def _clear(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.received.clear()
        await self._show(scope, receive, send)
