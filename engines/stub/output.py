"""The stub engine's response bytes, shaped as vLLM's OpenAI server shapes them.

Everything here is pure: the deterministic answer text, whole JSON bodies,
SSE events for streams (with the per-stream constant part encoded once), the
model list and the Prometheus text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from engines.stub.plan import Extras, Plan, RequestError

WORDS: tuple[str, ...] = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "amber", "basil", "cedar", "dune", "ember", "fjord",
    "grove", "harbor", "island", "jade", "kelp", "lagoon", "meadow", "nectar",
    "orchid", "pebble", "quartz", "river", "saffron", "thistle", "umber", "valley",
    "willow", "yarrow", "zephyr", "acorn", "breeze", "canyon", "drift", "estuary",
    "fern", "glacier", "heather", "iris", "juniper", "kestrel", "lantern", "marble",
)  # fmt: skip

_CHOICE_STRIDE = 17
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


def token_texts(seed: int, count: int, choice: int = 0) -> list[str]:
    """The ``count`` tokens of one choice: words from `WORDS`, each after a space
    except the first, starting at an offset fixed by ``seed`` and ``choice``."""
    start = seed + choice * _CHOICE_STRIDE
    size = len(WORDS)
    return [
        (WORDS[(start + i) % size] if i == 0 else " " + WORDS[(start + i) % size])
        for i in range(count)
    ]


def new_id(chat: bool) -> str:
    """A fresh response id with OpenAI's prefix (``chatcmpl-`` or ``cmpl-``)."""
    return ("chatcmpl-" if chat else "cmpl-") + os.urandom(12).hex()


def usage(plan: Plan) -> dict[str, int]:
    """The ``usage`` object of a finished request (all choices counted)."""
    completion = plan.completion_tokens * plan.n
    return {
        "prompt_tokens": plan.prompt_tokens,
        "total_tokens": plan.prompt_tokens + completion,
        "completion_tokens": completion,
    }


def response_body(plan: Plan, response_id: str, created: int) -> bytes:
    """The whole non-streaming JSON body: ``chat.completion`` or ``text_completion``."""
    extras = plan.extras
    choices: list[dict[str, Any]] = []
    for index in range(plan.n):
        tokens = token_texts(plan.seed, plan.completion_tokens, index)
        text = "".join(tokens)
        choice: dict[str, Any] = {"index": index}
        if plan.chat:
            choice["message"] = {"role": "assistant", "content": text}
            if extras is not None:
                _message_extras(choice["message"], extras, response_id, index, text)
        else:
            choice["text"] = text
        choice["logprobs"] = _logprobs(plan, tokens) if extras and extras.logprobs else None
        choice["finish_reason"] = plan.finish_reason
        if extras is not None:
            choice["stop_reason"] = extras.stop_reason
            if extras.token_ids:
                choice["token_ids"] = [token_id(t) for t in tokens]
        choices.append(choice)
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion" if plan.chat else "text_completion",
        "created": created,
        "model": plan.model,
        "choices": choices,
        "usage": usage(plan),
    }
    if extras is not None and extras.fingerprint is not None:
        body["system_fingerprint"] = extras.fingerprint
    return orjson.dumps(body)


def token_id(text: str) -> int:
    """A token's made-up id (stable: its word's place in `WORDS`)."""
    word = text.strip()
    return WORDS.index(word) + 1000 if word in WORDS else 999


def tool_call_id(response_id: str, choice: int) -> str:
    return f"chatcmpl-tool-{response_id[-8:]}{choice}"


def tool_arguments(tokens: Sequence[str]) -> list[str]:
    """A tool call's arguments in pieces, one per token: ``{"q": "<text>"}`` in all."""
    if not tokens:
        return ['{"q": ""}']
    pieces = list(tokens)
    pieces[0] = '{"q": "' + pieces[0]
    pieces[-1] += '"}'
    return pieces


def _message_extras(
    message: dict[str, Any], extras: Extras, response_id: str, index: int, text: str
) -> None:
    if extras.reasoning is not None:
        message["reasoning"] = extras.reasoning
    if extras.tool is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": tool_call_id(response_id, index),
                "type": "function",
                "function": {"name": extras.tool, "arguments": '{"q": "' + text + '"}'},
            }
        ]


def _logprobs(plan: Plan, tokens: Sequence[str]) -> dict[str, Any]:
    """vLLM's logprobs object for ``tokens`` (chat: ``content``; completions: lists)."""
    values = [-0.25 - 0.01 * (i % 7) for i in range(len(tokens))]
    if plan.chat:
        return {
            "content": [
                {"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
                for t, v in zip(tokens, values, strict=True)
            ]
        }
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {
        "text_offset": offsets,
        "token_logprobs": values,
        "tokens": list(tokens),
        "top_logprobs": [{t: v} for t, v in zip(tokens, values, strict=True)],
    }


class StreamEvents:
    """SSE events of one stream; the part shared by every chunk is encoded once.

    Every event is ``data: <json>\\n\\n``; chat streams carry ``delta`` objects,
    completion streams carry ``text``.
    """

    def __init__(self, plan: Plan, response_id: str, created: int) -> None:
        self._plan = plan
        self._steps: dict[int, int] = {}
        self._envelope: dict[str, Any] = {
            "id": response_id,
            "object": "chat.completion.chunk" if plan.chat else "text_completion",
            "created": created,
            "model": plan.model,
        }
        head = orjson.dumps(self._envelope)[:-1]
        self._head = b"data: " + head + b',"choices":[{"index":'
        field = b',"delta":{"content":' if plan.chat else b',"text":'
        literal = self._head.replace(b"%", b"%%")  # the model name may hold '%'
        self._token_template = literal + b"%d" + field + b"%s"
        self._token_tail = (b"}" if plan.chat else b"") + (
            b',"logprobs":null,"finish_reason":null}]}\n\n'
        )

    def role(self, choice: int) -> bytes:
        """The first chat event of a choice: the assistant role, empty content; then,
        as vLLM streams them, the reasoning and the start of a tool call."""
        first = self._chunk(choice, {"role": "assistant", "content": ""}, None)
        extras = self._plan.extras
        if extras is None:
            return first
        events = [first]
        if extras.reasoning is not None:
            for word in extras.reasoning.split(" "):
                events.append(self._chunk(choice, {"reasoning": word + " "}, None))
        if extras.tool is not None:
            call = {
                "index": 0,
                "id": tool_call_id(self._envelope["id"], choice),
                "type": "function",
                "function": {"name": extras.tool, "arguments": ""},
            }
            events.append(self._chunk(choice, {"tool_calls": [call]}, None))
        return b"".join(events)

    def token(self, choice: int, text: str) -> bytes:
        """One content event carrying ``text`` (or a piece of a tool call's arguments)."""
        extras = self._plan.extras
        if extras is None:
            return self._token_template % (choice, orjson.dumps(text)) + self._token_tail
        return self._extra_token(extras, choice, text)

    def _extra_token(self, extras: Extras, choice: int, text: str) -> bytes:
        """A token event with what the request asked for besides the text."""
        step = self._steps.get(choice, 0)
        self._steps[choice] = step + 1
        piece = text
        if extras.tool is not None:
            tokens = token_texts(self._plan.seed, self._plan.completion_tokens, choice)
            piece = tool_arguments(tokens)[step]
        payload: Any
        if not self._plan.chat:
            payload = piece
        elif extras.tool is not None:
            payload = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        else:
            payload = {"content": piece}
        entry: dict[str, Any] = {"index": choice, "delta" if self._plan.chat else "text": payload}
        entry["logprobs"] = _logprobs(self._plan, [text]) if extras.logprobs else None
        entry["finish_reason"] = None
        if extras.token_ids:
            entry["token_ids"] = [token_id(text)]
        return b"data: " + orjson.dumps({**self._envelope, "choices": [entry]}) + b"\n\n"

    def finish(self, choice: int) -> bytes:
        """The event that ends a choice: empty delta (or text) and the finish reason."""
        extras = self._plan.extras
        if extras is None:
            return self._chunk(choice, {} if self._plan.chat else "", self._plan.finish_reason)
        if extras.stream_error is not None:  # as vLLM writes it (json.dumps: with spaces)
            error = {"message": extras.stream_error, "type": "BadRequestError"}
            text = json.dumps({"error": error | {"param": None, "code": 400}})
            return b"data: " + text.encode() + b"\n\n"
        entry: dict[str, Any] = {"index": choice, "delta" if self._plan.chat else "text": {}}
        if not self._plan.chat:
            entry["text"] = ""
        entry["logprobs"] = None
        entry["finish_reason"] = self._plan.finish_reason
        entry["stop_reason"] = extras.stop_reason
        event: dict[str, Any] = {**self._envelope, "choices": [entry]}
        if extras.fingerprint is not None:
            event["system_fingerprint"] = extras.fingerprint
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def usage(self) -> bytes:
        """The trailing usage event: no choices, the request's ``usage``."""
        event = {**self._envelope, "choices": [], "usage": usage(self._plan)}
        return b"data: " + orjson.dumps(event) + b"\n\n"

    def _chunk(self, choice: int, payload: Any, finish_reason: str | None) -> bytes:
        """One event built in full (rare events: role and finish)."""
        entry: dict[str, Any] = {"index": choice}
        entry["delta" if self._plan.chat else "text"] = payload
        entry["logprobs"] = None
        entry["finish_reason"] = finish_reason
        event = {**self._envelope, "choices": [entry]}
        return b"data: " + orjson.dumps(event) + b"\n\n"


def error_body(error: RequestError) -> bytes:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": error.param,
                "code": error.code,
            }
        }
    )


def models_body(models: Iterable[str], created: int) -> bytes:
    """The ``GET /v1/models`` list, one vLLM-style entry per served model."""
    data = [
        {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": model,
            "parent": None,
            "max_model_len": 4096,
        }
        for model in models
    ]
    return orjson.dumps({"object": "list", "data": data})


_GAUGES: tuple[tuple[str, str], ...] = (
    ("vllm:num_requests_running", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."),
)


_COUNTERS: tuple[tuple[str, str], ...] = (
    ("vllm:prompt_tokens", "Number of prefill tokens processed."),
    ("vllm:generation_tokens", "Number of generation tokens processed."),
)


def metrics_text(
    running: Mapping[str, int],
    models: Iterable[str],
    tokens: Mapping[str, Sequence[int]] | None = None,
) -> bytes:
    """Prometheus text with vLLM's metric names, one sample per model.

    ``num_requests_running`` follows requests in progress and the token counters
    the requests answered (``tokens``: model → prompt, generated); waiting and
    KV-cache usage are always zero.
    """
    lines: list[str] = []
    names = tuple(models)
    for metric, description in _GAUGES:
        lines.append(f"# HELP {metric} {description}")
        lines.append(f"# TYPE {metric} gauge")
        for model in names:
            value = float(running.get(model, 0)) if metric.endswith("running") else 0.0
            lines.append(f'{metric}{{model_name="{model}"}} {value}')
    for index, (metric, description) in enumerate(_COUNTERS):
        lines.append(f"# HELP {metric}_total {description}")
        lines.append(f"# TYPE {metric}_total counter")
        for model in names:
            value = float((tokens or {}).get(model, (0, 0))[index])
            lines.append(f'{metric}_total{{model_name="{model}"}} {value}')
    return ("\n".join(lines) + "\n").encode()
