"""The stub's ``POST /v1/embeddings``: deterministic vectors in vLLM's answer shape.

Each input's vector is a unit vector drawn from a hash of its text (or token ids),
so equal inputs always get equal vectors and different ones practically
orthogonal ones. The dimension is the request's ``dimensions``, else the
request's ``"stub": {"dimensions": N}``, else :data:`DEFAULT_DIMENSIONS` (what
all-MiniLM-L6-v2 gives). ``encoding_format`` ``float`` (the default) or
``base64`` (little-endian float32, as vLLM and OpenAI encode it). A token is
a whitespace-separated word, or one token id.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from typing import Any, Protocol

import orjson

from engines.stub.asgi import JSON, Receive, Scope, Send, read_body, send_bytes
from engines.stub.output import error_body
from engines.stub.plan import RequestError, StubConfig
from engines.stub.salts import check_cache_salt

DEFAULT_DIMENSIONS = 384
MAX_DIMENSIONS = 4096
MAX_INPUTS = 2048


class Counters(Protocol):
    """The part of the stub's stats this route counts in."""

    requests: int


def unit_vector(text: str, dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` floats, fixed by ``text``."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = hashlib.sha256(f"{counter}:{text}".encode("utf-8", "surrogatepass")).digest()
        values.extend((byte - 127.5) / 127.5 for byte in block)
        counter += 1
    del values[dimensions:]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def embeddings_body(config: StubConfig, body: Any) -> tuple[bytes, int]:
    """The answer to one embeddings request and its prompt tokens; `RequestError` for a
    request vLLM would refuse."""
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or model not in config.models:
        shown = model if isinstance(model, str) else "(missing)"
        raise RequestError(
            404, f"The model `{shown}` does not exist.", param="model", code="model_not_found"
        )
    check_cache_salt(body)
    inputs = _inputs(body.get("input"))
    dimensions = _dimensions(body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise RequestError(
            400, "'encoding_format' must be float or base64.", param="encoding_format"
        )
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, (text, count) in enumerate(inputs):
        vector = unit_vector(text, dimensions)
        embedding: Any = vector
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"index": index, "object": "embedding", "embedding": embedding})
        tokens += count
    answer = {
        "id": "embd-" + hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:32],
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    }
    return orjson.dumps(answer), tokens


def _inputs(value: Any) -> list[tuple[str, int]]:
    """Each input as (text to hash, tokens): a string, strings, token ids, lists of ids."""
    if isinstance(value, str):
        return [(value, max(1, len(value.split())))]
    if isinstance(value, list) and value and len(value) <= MAX_INPUTS:
        if all(isinstance(v, str) for v in value):
            return [(v, max(1, len(v.split()))) for v in value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [(",".join(map(str, value)), len(value))]
        if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
            return [(",".join(map(str, v)), len(v)) for v in value]
    raise RequestError(400, "'input' must be a string, strings or token ids.", param="input")


def _dimensions(body: dict[str, Any]) -> int:
    value = body.get("dimensions")
    overrides = body.get("stub")
    if value is None and isinstance(overrides, dict):
        value = overrides.get("dimensions")
    if value is None:
        return DEFAULT_DIMENSIONS
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_DIMENSIONS:
        return value
    raise RequestError(400, f"'dimensions' must be 1 to {MAX_DIMENSIONS}.", param="dimensions")


PATH = "/v1/embeddings"


class EmbeddingsRoute:
    """The route; each request counts in the stub's ``requests`` (``/stub/stats``)."""

    def __init__(self, config: StubConfig, stats: Counters) -> None:
        self._config = config
        self._stats = stats

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        if raw is None:
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self._stats.requests += 1
        try:
            if body is None:
                raise RequestError(400, "The request body is not valid JSON.")
            answer, _ = embeddings_body(self._config, body)
        except RequestError as error:
            await send_bytes(send, error.status, error_body(error), JSON)
            return
        await send_bytes(send, 200, answer, JSON)
