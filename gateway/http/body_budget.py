"""A worker's budget of request-body bytes held at once (``server.max_body_bytes_in_flight``).

``server.max_body_bytes`` bounds one body; without a bound on all of them, a
thousand authenticated clients each sending a 20 MiB image would make a worker
hold 20 GB. :class:`BodyBudget` counts the bytes of the bodies it meters from
the moment they are read until their request's response has ended, and refuses
a body that would take the total past the budget with 503 and ``Retry-After``:
at once when its ``Content-Length`` already says so (nothing of it is read), else
as soon as the bytes read say so (a chunked body).

Only bodies that may be large are metered: those declared above
:data:`SMALL_BODY_BYTES`, and those sent without a ``Content-Length``. The many
small ones cost nothing here (all of them together stay below
``SMALL_BODY_BYTES`` x ``server.max_connections``, about :data:`MAX_EXPANSION` times
that once decoded: 136 MiB for 1,024 connections). The line was 64 KiB: a 64 KiB
body of ``[{},{},...]`` decodes into 1.6 MB, held as long as its request, and 300
such requests at once took a worker +496 MiB, outside any budget.

Bytes count when the application *reads* them: with auth before the body
(:func:`gateway.http.context.read_body`), a client without a valid key never
gets its body read, so it can never take any of the budget.

A metered JSON body is charged for what it takes once decoded, too
(:func:`decoded_bytes`): tiny values decode into Python objects many times their
size (a 19 MiB list of ``{}`` took +584 MiB, 30x; a few such bodies at once took
gigabytes, under any budget of raw bytes). A body whose estimate alone exceeds the
budget can never be served: 413.

The estimate scans the body (about a nanosecond a byte); a body of at most
:data:`SCANNED_BODY_BYTES` is charged the most it could take instead
(:data:`MAX_EXPANSION` times its size, no scan) while that leaves half the budget
free, and scanned only when the budget is fuller: the common case costs nothing per
byte, a budget under pressure is charged what bodies really take.
"""

from __future__ import annotations

from starlette.types import Message, Receive

from gateway.errors import OverloadedError, PayloadTooLargeError, retry_after

SMALL_BODY_BYTES = 4 * 1024
"""Bodies declared at most this large are not metered."""
SCANNED_BODY_BYTES = 64 * 1024
"""Bodies up to this large are charged :data:`MAX_EXPANSION` times their size, unscanned,
while the budget is less than half full."""
RETRY_AFTER_S = 1
CONTAINER_BYTES = 64
"""What one JSON object or array costs decoded (an empty dict is 64 bytes, an empty
list 56, plus its place in its parent)."""
VALUE_BYTES = 32
"""What one more value in an object or array costs decoded (an int is 28 bytes, plus
its place): counted by its comma."""
MAX_EXPANSION = 1 + (CONTAINER_BYTES + VALUE_BYTES) // 3 + 1
"""The most a body's JSON can take decoded per byte of it, by :func:`decoded_bytes`'s
costs: every three bytes hold at most one container and one comma (``{},``), rounded
up. (:func:`decoded_bytes` itself can say more: it counts braces and commas inside
strings too, erring high; a string full of them takes little once decoded.)"""


def decoded_bytes(body: bytes) -> int:
    """About how many bytes ``body``'s JSON takes once decoded: its own, and the
    objects its containers and values become. Counted over the raw bytes (three C
    scans; braces and commas inside strings count too, erring high): a base64
    image counts as its length, a long text a few percent more."""
    containers = body.count(b"{") + body.count(b"[")
    return len(body) + CONTAINER_BYTES * containers + VALUE_BYTES * body.count(b",")


class BodyBudget:
    """Body bytes held by this worker's requests, against ``limit``. One per worker (its
    app); everything runs on one event loop, so there is no lock.

    ``max_body``: one body's own limit (``server.max_body_bytes``; None: ``limit``). A
    chunked body that takes the budget past its limit when it is itself past
    ``max_body`` gets 413, not 503: it could never be served, whatever the budget."""

    __slots__ = ("held", "limit", "max_body")

    def __init__(self, limit: int, max_body: int | None = None) -> None:
        self.limit = limit
        self.max_body = limit if max_body is None else max_body
        self.held = 0
        """Bytes of metered bodies read and not yet released."""

    def meters(self, declared: int | None, has_body: bool) -> bool:
        """Whether a request with this ``Content-Length`` (None: absent or invalid) is
        metered; ``has_body``: its method may carry one."""
        return declared > SMALL_BODY_BYTES if declared is not None else has_body

    def meter(self, receive: Receive, declared: int | None) -> MeteredReceive:
        return MeteredReceive(self, receive, declared)

    def refusal(self) -> OverloadedError:
        return OverloadedError(
            "The gateway is holding as many request bodies as it may right now; "
            f"try again in {RETRY_AFTER_S} s.",
            code="request_bytes_in_flight",
            headers=retry_after(RETRY_AFTER_S),
        )


def body_too_large(limit: int) -> PayloadTooLargeError:
    """413 for a body past ``server.max_body_bytes`` (``limit``)."""
    return PayloadTooLargeError(f"request body exceeds the limit of {limit} bytes")


class MeteredReceive:
    """An ASGI ``receive`` that charges the bytes it returns to a :class:`BodyBudget`;
    :meth:`release` gives them back (once the request's response has ended)."""

    __slots__ = ("_budget", "_checked", "_declared", "_held", "_receive")

    def __init__(self, budget: BodyBudget, receive: Receive, declared: int | None) -> None:
        self._budget = budget
        self._receive = receive
        self._declared = declared
        self._checked = False
        self._held = 0

    async def __call__(self) -> Message:
        budget = self._budget
        if not self._checked:  # the first read: refuse before any byte if it cannot fit
            self._checked = True
            if self._declared is not None and budget.held + self._declared > budget.limit:
                raise budget.refusal()
        message = await self._receive()
        if message["type"] == "http.request":
            size = len(message.get("body", b""))
            if size:
                self._held += size
                budget.held += size
                if budget.held > budget.limit:
                    if self._held > budget.max_body:  # (the bytes so far are its own)
                        raise body_too_large(budget.max_body)
                    raise budget.refusal()
        return message

    def charge_decoded(self, body: bytes) -> None:
        """Charge what the whole ``body`` (already charged as bytes) takes once decoded
        (:func:`decoded_bytes`): 503 while the budget cannot hold it, 413 if it never
        could."""
        budget = self._budget
        size = len(body)
        if size <= SCANNED_BODY_BYTES:
            most = size * MAX_EXPANSION
            if budget.held + most - size <= budget.limit // 2:  # room: no scan needed
                self._held += most - size
                budget.held += most - size
                return
        decoded = decoded_bytes(body)
        if decoded > budget.limit:
            raise PayloadTooLargeError(
                f"The request body would take about {decoded} bytes once decoded, more "
                f"than this gateway holds for all bodies at once ({budget.limit})."
            )
        extra = decoded - size
        self._held += extra
        budget.held += extra
        if budget.held > budget.limit:
            raise budget.refusal()

    def release(self) -> None:
        """Give back every byte this request was charged; idempotent."""
        self._budget.held -= self._held
        self._held = 0
