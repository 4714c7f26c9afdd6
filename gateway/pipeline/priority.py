"""A request's place in line: its key's tier, lowered if the client asked, carried to vLLM.

The key grants a tier (:attr:`gateway.auth.authenticator.Principal.priority`, vLLM's
scale: lower is served earlier). A client may ask for a *later* one for its own
request, never an earlier one:

* the header ``x-vgate-priority: <int | high | normal | low>``: an invalid value is
  refused (400); an earlier one than the key's is clamped to the key's;
* vLLM's own body field ``priority`` (an integer): clamped the same way, so the
  engine never sees an earlier priority than the key's, whatever the client wrote
  (a non-integer is refused, 400).

The request then waits in the admission queue at that priority (:mod:`gateway.pool.
shedding`), and, when tiers reach the engines (``routing.priority_tiers``), the
engine's body carries it as ``priority``. A body is re-encoded only when the client
sent a ``priority`` that must change; a request at the default priority (0, what
vLLM assumes without one) is forwarded byte for byte.

The Responses API and vLLM's own routes (:mod:`gateway.pipeline.responses`,
:mod:`gateway.pipeline.passthrough`) never get a ``priority`` added, but a client's
own field is checked and clamped the same way (:func:`body_priority`,
:func:`clamped_body`), so no route lets a key's request run earlier than its tier.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gateway.auth.authenticator import Principal
from gateway.config.priority import DEFAULT_PRIORITY, lowered, parse_priority
from gateway.errors import InvalidRequestError
from gateway.pipeline.plan import ParsedRequest
from gateway.protocol.exact_json import encoded_exactly

PRIORITY_HEADER = "x-vgate-priority"
_FIELD = "priority"


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class Place:
    """Where a request waits: its key (turns are taken per key) and its priority."""

    key: str
    priority: int


class PriorityTiers:
    """Resolves each request's :class:`Place` and writes its priority for the engine."""

    __slots__ = ("reach_engines",)

    def __init__(self, reach_engines: bool = False) -> None:
        self.reach_engines = reach_engines
        """Whether forwarded bodies carry ``priority`` (the engines schedule by it)."""

    def place(self, principal: Principal, header: str | None, body: dict[str, Any]) -> Place:
        """The request's place: the key's tier, or a later one the header or the body's
        ``priority`` asked for. 400 for a header or field that names no priority."""
        granted = principal.priority
        if header is not None:
            try:
                granted = lowered(granted, parse_priority(header))
            except ValueError as exc:
                raise InvalidRequestError(
                    f"{PRIORITY_HEADER} header: {exc}", code="invalid_priority"
                ) from None
        return Place(principal.name, body_priority(granted, body))

    def apply(self, parsed: ParsedRequest, place: Place) -> ParsedRequest:
        """``parsed`` with the engine's body carrying ``place.priority`` where it must:
        a client's ``priority`` field is overwritten when it differs (clamped), and
        when tiers reach the engines a request at a non-default priority gets one."""
        body = parsed.body
        if _FIELD in body:
            if body[_FIELD] == place.priority:
                return parsed
            body = body | {_FIELD: place.priority}
            payload = encoded_exactly(body, parsed.payload)
        elif self.reach_engines and place.priority != DEFAULT_PRIORITY:
            body = body | {_FIELD: place.priority}
            end = parsed.payload.rstrip()  # a JSON object: its last byte is "}"
            payload = b'%s,"priority":%d}' % (end[:-1], place.priority)
        else:
            return parsed
        return replace(parsed, body=body, payload=payload)  # rare: no hot-path cost


def body_priority(granted: int, body: dict[str, Any]) -> int:
    """``granted``, or the later priority the body's ``priority`` field asks for (never
    an earlier one). 400 ``invalid_priority`` for a field that is not an integer in range."""
    asked = body.get(_FIELD)
    if asked is None:
        return granted
    if isinstance(asked, bool) or not isinstance(asked, int):
        raise InvalidRequestError(
            "priority must be an integer", param=_FIELD, code="invalid_priority"
        )
    try:
        return lowered(granted, parse_priority(asked))
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param=_FIELD, code="invalid_priority") from None


def clamped_body(body: dict[str, Any], priority: int) -> dict[str, Any] | None:
    """``body`` with its ``priority`` field set to ``priority`` (from :func:`body_priority`)
    where the client wrote another value; None when the body stays as it is (no field,
    or already that value). Never adds the field: for the routes whose bodies carry no
    priority of the gateway's (the Responses API, vLLM's own routes)."""
    if _FIELD not in body or body[_FIELD] == priority:
        return None
    return body | {_FIELD: priority}
