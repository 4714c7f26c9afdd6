"""Whether an engine's 2xx answer is one the gateway can relay faithfully.

A 2xx labelled ``application/json`` must be JSON in UTF-8 (the client's SDK parses it,
and the cache keeps it); on the completion and Responses routes it must also be a JSON
object so labelled (HTML, an empty 204 or a JSON string are no answer). Anything else
is the engine's failure: the forwarder answers 502 and never sends the request to a
second engine (the generation may have run already). The parse is kept on the reply
for what reads the answer next (its usage, the cache fill), so nothing parses twice.
"""

from __future__ import annotations

import orjson

from gateway.upstream.transport import UpstreamReply

PARSED_BYTES = 64 << 10
"""The largest JSON answer checked by parsing it whole (~0.1 ms of the event loop at 64
KiB; review measured 1.6 ms at 1 MiB); a larger one (embeddings, a long generation)
is only checked to be one object or array (its first and last bytes): every other
request on the loop waits while one is parsed. (A Responses answer is parsed whole at
any size: the route reads it whole anyway, from the parse kept.)"""


def checked_json(
    reply: UpstreamReply, json_object: bool = False, whole: bool = False
) -> str | None:
    """Why a 2xx answer labelled JSON is not (not UTF-8 JSON: an answer the client's SDK
    could not parse, and no answer to cache), else None, with the parse kept as
    ``reply.answer`` for what reads the answer next (its usage, the cache fill), so that
    nothing parses it twice. One ``orjson.loads`` per answer: about 1 µs for a 450-byte
    chat answer (the byte search for its usage that it replaces took half that).
    ``json_object``: the answer must be a JSON object, labelled ``application/json``
    (a completion's: HTML, an empty 204 or a JSON string are no answer). ``whole``: parsed
    whole whatever its size (a route that parses its answer anyway: the Responses
    route, which keeps ``reply.answer``)."""
    if json_object and reply.content_type != "application/json":
        shown = reply.content_type or "no content type"
        return f"an answer labelled {shown[:64]}, not application/json"
    body = reply.body
    if len(body) > PARSED_BYTES and not whole:  # (its ends only: stripping it whole would copy it)
        ends = body[:64].lstrip()[:1] + body[-64:].rstrip()[-1:]
        return None if ends == b"{}" or (ends == b"[]" and not json_object) else _NOT_JSON
    try:
        answer = reply.answer = orjson.loads(body)
    except orjson.JSONDecodeError:  # (orjson refuses a body that is not UTF-8 too)
        return _NOT_JSON
    if json_object and type(answer) is not dict:
        return "an answer that is not a JSON object"
    return None


_NOT_JSON = "an answer labelled application/json that is not valid JSON in UTF-8"
