"""The stub engine's ASGI plumbing: reading, sending, disconnects, and acting out a plan.

A plan's answer is sent here; what it says comes from `engines.stub.output`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, NoReturn, Protocol, TypeVar

from engines.stub.output import (
    DONE_EVENT,
    SSE_HEADERS,
    StreamEvents,
    new_id,
    response_body,
    token_texts,
)
from engines.stub.plan import Fault, Plan

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

T = TypeVar("T")

JSON = b"application/json"
COMPLETED = "completed"
DROPPED = "dropped"


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client disconnected first."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes | None,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A complete response with a ``content-length`` (keeps the connection reusable)."""
    headers = [(b"content-length", b"%d" % len(body))]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def until_disconnect(work: Coroutine[Any, Any, T], receive: Receive) -> T | None:
    """Run ``work`` until it returns or the client disconnects, whichever comes first.

    Returns what ``work`` returned (which must not be None), or None when the
    client left first: ``work`` is then cancelled, even mid-sleep. A send that
    raises `OSError` also means the client left. Call it only once the request
    body has been read, so that ``receive`` can only report the disconnect.
    """
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        return None
    except OSError:
        return None
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.wait((work_task, watch_task))


async def _wait_disconnect(receive: Receive) -> None:
    """Return once the server reports ``http.disconnect``.

    Servers also report it once the response is complete, so a caller must
    look at its own work first.
    """
    while (await receive())["type"] != "http.disconnect":
        pass


class StreamCounts(Protocol):
    """What :func:`act_out` counts (the stub's statistics)."""

    streams_started: int
    streams_completed: int
    streams_cancelled: int
    streams_dropped: int
    requests_cancelled: int


async def act_out(
    stats: StreamCounts,
    fault: Fault | None,
    stream: Callable[[], Coroutine[Any, Any, str]] | None,
    receive: Receive,
) -> bool:
    """What every answering route shares: a hang fault (from the start, or anywhere in
    an answer that is not streamed) that lasts until the client leaves, or a ``stream``
    (None: the answer is not streamed) sent while watching for the client leaving,
    each counted; False when the answer is neither (the caller sends it whole)."""
    if fault is not None and fault.kind == "hang" and (fault.after == 0 or stream is None):
        await until_disconnect(wait_forever(), receive)
        stats.requests_cancelled += 1
        return True
    if stream is None:
        return False
    stats.streams_started += 1
    outcome = await until_disconnect(stream(), receive)
    if outcome is None:
        stats.streams_cancelled += 1
        stats.requests_cancelled += 1
    elif outcome == DROPPED:
        stats.streams_dropped += 1
    else:
        stats.streams_completed += 1
    return True


async def wait_forever() -> NoReturn:
    """Never return: a hang lasts until its task is cancelled."""
    await asyncio.Event().wait()
    raise AssertionError("an Event nobody sets was set")


async def send_stream(plan: Plan, send: Send) -> str:
    """Send an SSE stream, one body message per token step.

    Returns `COMPLETED`, or `DROPPED` after ``fault.after`` content chunks
    when the plan's fault is a drop, leaving the response unfinished so the
    server closes the connection without the terminating chunk. A hang fault
    waits there instead, until cancelled.
    """
    events = StreamEvents(plan, new_id(plan.chat), int(time.time()))
    choices = range(plan.n)
    texts = [token_texts(plan.seed, plan.completion_tokens, choice) for choice in choices]
    stop_after = plan.fault.after if plan.fault is not None else plan.completion_tokens
    if plan.ttft_s > 0:
        await asyncio.sleep(plan.ttft_s)
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    if plan.chat:
        await _send_chunk(send, b"".join(events.role(choice) for choice in choices))
    for step in range(min(stop_after, plan.completion_tokens)):
        if step > 0 and plan.itl_s > 0:
            await asyncio.sleep(plan.itl_s)
        await _send_chunk(send, b"".join(events.token(c, texts[c][step]) for c in choices))
    if plan.fault is not None:
        if plan.fault.kind == "hang":
            await wait_forever()
        return DROPPED
    tail = [events.finish(choice) for choice in choices]
    if plan.include_usage:
        tail.append(events.usage())
    tail.append(DONE_EVENT)
    await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
    return COMPLETED


async def send_whole(plan: Plan, send: Send) -> str:
    """Send a non-streaming answer after the time generating it would take.

    A drop fault sends the headers and half the body, then leaves the response
    unfinished so the server cuts the connection.
    """
    delay = plan.ttft_s + plan.itl_s * max(plan.completion_tokens - 1, 0)
    if delay > 0:
        await asyncio.sleep(delay)
    body = response_body(plan, new_id(plan.chat), int(time.time()))
    if plan.fault is not None and plan.fault.kind == "drop":
        length = str(len(body)).encode()
        headers = [(b"content-type", JSON), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await _send_chunk(send, body[: len(body) // 2])
        return DROPPED
    await send_bytes(send, 200, body, JSON)
    return COMPLETED


async def _send_chunk(send: Send, body: bytes) -> None:
    """One body message of a response that continues."""
    await send({"type": "http.response.body", "body": body, "more_body": True})
