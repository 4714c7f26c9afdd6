"""vLLM's model-scoped routes on the stub: minimal, deterministic answers in vLLM's shapes.

``/tokenize`` and ``/detokenize`` (a byte-level tokenizer: one token per UTF-8
byte, so they round-trip), ``/v1/score`` and ``/score`` (word overlap),
``/v1/rerank``, ``/rerank`` and ``/v2/rerank``, ``/pooling``, ``/classify``, and
``/v1/audio/transcriptions|translations`` (multipart; the "transcript" names the
file's size). Shapes follow vLLM 0.32 (``vllm/entrypoints/serve/tokenize``,
``pooling/*``, ``speech_to_text/*``). Each request is counted and recorded in the
stub's stats (``last_request``), as completions are, so tests can see what reached
the engine. An unknown model is vLLM's 404.

Also the model list with LoRA adapters (``--lora NAME=BASE``): an adapter is listed
with ``parent`` set to its base model, as vLLM lists ``--lora-modules``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson

from engines.stub.asgi import JSON, Receive, Scope, Send, read_body, send_bytes
from engines.stub.output import error_body
from engines.stub.plan import RequestError
from engines.stub.salts import check_cache_salt

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
Recorder = Callable[[Scope, Any], None]
"""Counts a request and records it as the stub's ``last_request``."""

MAX_MODEL_LEN = 4096
_CLASSES = ("negative", "positive")


class ExtraRoutes:
    """The routes above for one stub app; :meth:`routes` is merged into its dispatch."""

    def __init__(
        self, models: tuple[str, ...], adapters: Mapping[str, str], record: Recorder
    ) -> None:
        self._adapters = dict(adapters)
        self._models = (*models, *(a for a in adapters if a not in models))
        self._record = record
        self._created = int(time.time())

    def routes(self) -> dict[str, dict[str, Handler]]:
        json_routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/tokenize": self._tokenize,
            "/detokenize": self._detokenize,
            "/v1/score": self._score,
            "/score": self._score,
            "/v1/rerank": self._rerank,
            "/rerank": self._rerank,
            "/v2/rerank": self._rerank,
            "/pooling": self._pooling,
            "/classify": self._classify,
        }
        table: dict[str, dict[str, Handler]] = {
            path: {"POST": self._json_handler(answer)} for path, answer in json_routes.items()
        }
        table["/v1/audio/transcriptions"] = {"POST": self._audio}
        table["/v1/audio/translations"] = {"POST": self._audio}
        table["/v1/models"] = {"GET": self._list_models}
        return table

    @property
    def models(self) -> tuple[str, ...]:
        """Every name served: base models and adapters."""
        return self._models

    def _json_handler(self, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Handler:
        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            raw = await read_body(receive)
            if raw is None:
                return
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            self._record(scope, body)
            try:
                if not isinstance(body, dict):
                    raise RequestError(400, "The request body is not a JSON object.")
                self._check_model(body.get("model"))
                check_cache_salt(body)
                result = answer(body)
            except RequestError as error:
                await send_bytes(send, error.status, error_body(error), JSON)
                return
            await send_bytes(send, 200, orjson.dumps(result), JSON)

        return handle

    def _check_model(self, model: Any) -> str:
        if not isinstance(model, str) or model not in self._models:
            raise RequestError(
                404,
                f"The model `{model}` does not exist.",
                error_type="NotFoundError",
                param="model",
            )
        return model

    # -- JSON routes ------------------------------------------------------------------

    def _tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        tokens = list(_text_of(body).encode())
        strs = [chr(t) for t in tokens] if body.get("return_token_strs") else None
        return {
            "count": len(tokens),
            "max_model_len": MAX_MODEL_LEN,
            "tokens": tokens,
            "token_strs": strs,
        }

    def _detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise RequestError(400, "tokens: a list of integers is required", param="tokens")
        return {"prompt": bytes(t % 256 for t in tokens).decode(errors="replace")}

    def _score(self, body: dict[str, Any]) -> dict[str, Any]:
        first = _texts(body.get("text_1", body.get("queries")))
        second = _texts(body.get("text_2", body.get("documents", body.get("items"))))
        if not first or not second:
            raise RequestError(400, "text_1 and text_2 are required", param="text_1")
        pairs = [(first[0] if len(first) == 1 else first[i], text) for i, text in enumerate(second)]
        data = [
            {"index": i, "object": "score", "score": _overlap(a, b)}
            for i, (a, b) in enumerate(pairs)
        ]
        return {
            "id": f"score-{_digest(body)}",
            "object": "list",
            "created": self._created,
            "model": body["model"],
            "data": data,
            "usage": _usage(sum(len(a.split()) + len(b.split()) for a, b in pairs)),
        }

    def _rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        query = body.get("query")
        documents = _texts(body.get("documents"))
        if not isinstance(query, str) or not documents:
            raise RequestError(400, "query and documents are required", param="query")
        order = sorted(range(len(documents)), key=lambda i: (-_overlap(query, documents[i]), i))
        ranked = [
            {
                "index": i,
                "document": {"text": documents[i]},
                "relevance_score": _overlap(query, documents[i]),
            }
            for i in order
        ]
        top_n = body.get("top_n")
        if isinstance(top_n, int) and top_n > 0:
            ranked = ranked[:top_n]
        tokens = len(query.split()) * len(documents) + sum(len(d.split()) for d in documents)
        return {
            "id": f"rerank-{_digest(body)}",
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "results": ranked,
        }

    def _pooling(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = _texts(body.get("input"))
        data = [
            {"index": i, "object": "pooling", "data": _vector(text)}
            for i, text in enumerate(inputs)
        ]
        return self._listing("pool", body, data, inputs)

    def _classify(self, body: dict[str, Any]) -> dict[str, Any]:
        inputs = _texts(body.get("input"))
        data: list[dict[str, Any]] = []
        for i, text in enumerate(inputs):
            positive = round(_vector(text)[0] / 2 + 0.5, 6)
            probs = [round(1 - positive, 6), positive]
            label = _CLASSES[probs.index(max(probs))]
            data.append({"index": i, "label": label, "probs": probs, "num_classes": 2})
        return self._listing("classify", body, data, inputs)

    def _listing(
        self, kind: str, body: dict[str, Any], data: list[dict[str, Any]], inputs: list[str]
    ) -> dict[str, Any]:
        return {
            "id": f"{kind}-{_digest(body)}",
            "object": "list",
            "created": self._created,
            "model": body["model"],
            "data": data,
            "usage": _usage(sum(len(t.split()) for t in inputs)),
        }

    # -- audio and the model list ---------------------------------------------------

    async def _audio(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(receive)
        if raw is None:
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        fields = _form_fields(content_type, raw)
        self._record(scope, {k: v for k, v in fields.items() if k != "file"})
        try:
            self._check_model(fields.get("model"))
            audio = fields.get("file")
            if not isinstance(audio, bytes):
                raise RequestError(400, "file: an audio file is required", param="file")
        except RequestError as error:
            await send_bytes(send, error.status, error_body(error), JSON)
            return
        text = f"stub transcript of {len(audio)} bytes"
        if fields.get("response_format") == "text":
            await send_bytes(send, 200, text.encode(), b"text/plain; charset=utf-8")
            return
        answer = {"text": text, "usage": {"type": "duration", "seconds": 1}}
        await send_bytes(send, 200, orjson.dumps(answer), JSON)

    async def _list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        data: list[dict[str, Any]] = [
            {
                "id": name,
                "object": "model",
                "created": self._created,
                "owned_by": "vllm",
                "root": f"/adapters/{name}" if name in self._adapters else name,
                "parent": self._adapters.get(name),
                "max_model_len": MAX_MODEL_LEN,
                "permission": [],
            }
            for name in self._models
        ]
        await send_bytes(send, 200, orjson.dumps({"object": "list", "data": data}), JSON)


def _text_of(body: dict[str, Any]) -> str:
    """A tokenize request's text: its prompt, or its messages' contents joined."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(
            m["content"]
            for m in messages
            if isinstance(m, dict) and isinstance(m.get("content"), str)
        )
    raise RequestError(400, "prompt or messages is required", param="prompt")


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _overlap(a: str, b: str) -> float:
    """Jaccard similarity of the two texts' lower-cased words (1.0: the same words)."""
    left, right = set(a.lower().split()), set(b.lower().split())
    if not left or not right:
        return 0.0
    return round(len(left & right) / len(left | right), 6)


def _vector(text: str) -> list[float]:
    """Four deterministic numbers in [-1, 1] derived from the text."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return [round(b / 127.5 - 1, 6) for b in digest[:4]]


def _digest(body: dict[str, Any]) -> str:
    return hashlib.blake2b(
        orjson.dumps(body, option=orjson.OPT_SORT_KEYS), digest_size=8
    ).hexdigest()


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}


def _form_fields(content_type: str, raw: bytes) -> dict[str, str | bytes]:
    """A multipart form's fields: text values as str, file parts as bytes (the stub's
    own reading; the gateway never needs a framework for it)."""
    if not content_type.lower().startswith("multipart/form-data"):
        return {}
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    fields: dict[str, str | bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        fields[name] = payload if part.get_filename() else payload.decode(errors="replace")
    return fields
