"""What the stub engine does for one request.

The stub's start-up configuration (`StubConfig`) and a request's optional
``"stub"`` object are merged here into a `Plan`: which model answers, how many
choices and tokens, which delays, and which fault (if any) to act out. All of
it is pure: no I/O, no clock, so the same body always yields the same plan.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["error", "drop", "hang"]

_FAULT_KINDS: frozenset[str] = frozenset(("error", "drop", "hang"))
_MAX_CHOICES = 64
_TOKENS_PER_MESSAGE = 4


@dataclass(frozen=True)
class StubConfig:
    """Start-up behaviour of a stub engine; a request's ``"stub"`` object overrides it.

    ``fail_status`` makes every completion (and ``/v1/responses``) request answer
    that status with an OpenAI error body; ``drop_after`` makes every stream close its
    connection abruptly after that many content chunks (text deltas for responses);
    ``hang`` makes every such request wait, unanswered, until the client leaves.
    """

    models: tuple[str, ...] = ("stub-model",)
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    tokens: int = 16
    fail_status: int | None = None
    drop_after: int | None = None
    hang: bool = False
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    """Accepted like vLLM's flag and shown at ``/stub/priorities``; answers keep arrival order."""
    prompt_tokens: Literal["words", "chars"] = "words"
    """How a text prompt's ``usage.prompt_tokens`` is counted: a token per word, or
    (``chars``) one per character, as a real tokenizer counts crafted text (single
    letters, CJK, emoji) or worse."""


class RequestError(Exception):
    """A request the stub answers with an OpenAI error body and ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour to act out: ``after`` counts content chunks sent first."""

    kind: FaultKind
    status: int = 500
    after: int = 0


@dataclass(frozen=True, slots=True)
class Extras:
    """What vLLM adds to an answer beyond its text, asked for by the request (the
    stub acts it out so tests can show every field survives the gateway's cache):

    * ``reasoning``: ``"stub": {"reasoning": "..."}`` (a reasoning parser's output);
    * ``tool``: the first function of ``tools`` when ``tool_choice`` is
      ``"required"`` or names it (the answer is a call, ``finish_reason: tool_calls``);
    * ``fingerprint``: ``"stub": {"system_fingerprint": "..."}``;
    * ``stop_reason``: ``"stub": {"stop_reason": ...}`` (sent, as vLLM does, with
      every finished choice once any extra is on);
    * ``token_ids``: ``return_token_ids: true``;
    * ``logprobs``: ``logprobs: true`` (chat) or an integer (completions);
    * ``stream_error``: ``"stub": {"stream_error": "..."}``: a stream ends with vLLM's
      error event (``data: {"error": {..., "code": 400}}``) instead of its finish.

    (``"stub": {"vllm_error": "...", "status": 400}`` answers with vLLM's error body.)
    """

    reasoning: str | None = None
    tool: str | None = None
    fingerprint: str | None = None
    stop_reason: int | str | None = None
    token_ids: bool = False
    logprobs: bool = False
    stream_error: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything needed to answer one valid completion request.

    ``completion_tokens`` is per choice; ``seed`` picks where in the word list
    each answer starts, so equal prompts give equal answers.
    """

    chat: bool
    model: str
    stream: bool
    include_usage: bool
    n: int
    completion_tokens: int
    finish_reason: str
    seed: int
    prompt_tokens: int
    ttft_s: float
    itl_s: float
    fault: Fault | None
    extras: Extras | None = None


def plan_request(config: StubConfig, body: Any, *, chat: bool) -> Plan:
    """Validate a parsed request body and decide how to answer it.

    Raises `RequestError` for an invalid body, for an error fault (before the
    model is checked, so a failing stub fails every request) and for a missing
    or unknown model (404 ``model_not_found``).
    """
    if not isinstance(body, dict):
        raise RequestError(400, "The request body must be a JSON object.")
    stream = _optional_bool(body, "stream")
    overrides = _overrides(body.get("stub"))
    fault = _resolve_fault(config, overrides, stream)
    _raise_vllm_error(overrides)
    if fault is not None and fault.kind == "error":
        raise _injected_error(fault)
    model = _model(config, body.get("model"))
    prompt, prompt_tokens = _chat_prompt(body) if chat else _completion_prompt(body)
    if config.prompt_tokens == "chars" and not _token_ids(body.get("prompt")):
        prompt_tokens = len(prompt) + (_TOKENS_PER_MESSAGE * len(body["messages"]) if chat else 0)
    target = _override_int(overrides, "tokens", config.tokens)
    cap = _token_cap(body, chat)
    count = target if cap is None else min(target, cap)
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and _lax_true(
        stream_options.get("include_usage")
    )
    return Plan(
        chat=chat,
        model=model,
        stream=stream,
        include_usage=include_usage,
        n=_choices(body.get("n")),
        completion_tokens=count,
        finish_reason=_finish_reason(body, overrides, chat, cap is not None and cap <= target),
        seed=zlib.crc32(prompt.encode("utf-8", "surrogatepass")),
        prompt_tokens=prompt_tokens,
        ttft_s=_override_ms(overrides, "ttft_ms", config.ttft_ms) / 1000.0,
        itl_s=_override_ms(overrides, "itl_ms", config.itl_ms) / 1000.0,
        fault=fault,
        extras=_extras(body, overrides, chat),
    )


def injected_fault(config: StubConfig, body: dict[str, Any], stream: bool) -> Fault | None:
    """The fault a request of another route (``/v1/responses``) acts out, decided as for
    completions: its ``"stub"`` object's, else the start-up flags' (``--fail-status``,
    ``--hang``, ``--drop-after`` for streams). An error fault is raised here, as its
    :class:`RequestError`."""
    overrides = _overrides(body.get("stub"))
    fault = _resolve_fault(config, overrides, stream)
    _raise_vllm_error(overrides)
    if fault is not None and fault.kind == "error":
        raise _injected_error(fault)
    return fault


def _raise_vllm_error(overrides: dict[str, Any]) -> None:
    """``"stub": {"vllm_error": "...", "status": 400}``: answer with vLLM's error body
    (type ``BadRequestError``, the status as its ``code``)."""
    vllm_error = overrides.get("vllm_error")
    if isinstance(vllm_error, str):
        status = _override_int(overrides, "status", 400)
        kind = "BadRequestError" if status == 400 else "NotFoundError"
        raise RequestError(status, vllm_error, error_type=kind, param="input_tokens", code=status)


def _injected_error(fault: Fault) -> RequestError:
    return RequestError(
        fault.status,
        f"stub engine: injected failure with status {fault.status}",
        error_type=error_type_for(fault.status),
        code="stub_fault",
    )


def _extras(body: dict[str, Any], overrides: dict[str, Any], chat: bool) -> Extras | None:
    """The request's :class:`Extras`, or None when it asks for none."""
    reasoning = overrides.get("reasoning")
    fingerprint = overrides.get("system_fingerprint")
    stop_reason = overrides.get("stop_reason")
    stream_error = overrides.get("stream_error")
    extras = Extras(
        reasoning=reasoning if isinstance(reasoning, str) and chat else None,
        tool=_required_tool(body) if chat else None,
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        stop_reason=stop_reason if isinstance(stop_reason, (int, str)) else None,
        token_ids=body.get("return_token_ids") is True,
        logprobs=(body.get("logprobs") is True) if chat else isinstance(body.get("logprobs"), int),
        stream_error=stream_error if isinstance(stream_error, str) else None,
    )
    return None if extras == Extras() else extras


def _required_tool(body: dict[str, Any]) -> str | None:
    """The function the answer must call: the first tool's for ``tool_choice:
    "required"``, the named one for ``{"type": "function", "function": {"name"}}``."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return name if isinstance(name, str) else None
    first = tools[0].get("function") if isinstance(tools[0], dict) else None
    name = first.get("name") if isinstance(first, dict) else None
    return name if choice == "required" and isinstance(name, str) else None


def _finish_reason(
    body: dict[str, Any], overrides: dict[str, Any], chat: bool, capped: bool
) -> str:
    if capped:
        return "length"
    return "tool_calls" if chat and _required_tool(body) is not None else "stop"


def _lax_true(value: Any) -> bool:
    """True where vLLM's (lax pydantic) bool reads true: True, 1, "yes", "true", "on"..."""
    if isinstance(value, str):
        return value.lower() in ("1", "on", "t", "true", "y", "yes")
    return value is True or (type(value) in (int, float) and value == 1)


def error_type_for(status: int) -> str:
    """The OpenAI ``error.type`` that goes with an HTTP status."""
    if status >= 500:
        return "server_error"
    return {
        401: "authentication_error",
        403: "permission_error",
        429: "rate_limit_error",
    }.get(status, "invalid_request_error")


def _overrides(value: Any) -> dict[str, Any]:
    """The request's ``"stub"`` object; absent means no overrides."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, "'stub' must be an object.", param="stub")
    return value


def _resolve_fault(config: StubConfig, overrides: dict[str, Any], stream: bool) -> Fault | None:
    """The request's own fault if it names one, else the configured one."""
    kind = overrides.get("fault")
    if kind is not None:
        if kind not in _FAULT_KINDS:
            raise RequestError(400, f"Unknown stub fault {kind!r}.", param="stub.fault")
        status = _override_int(overrides, "status", 500)
        if not 400 <= status <= 599:
            raise RequestError(400, "'stub.status' must be 400-599.", param="stub.status")
        after = _override_int(overrides, "after", 0)
        return Fault(kind, status, after)
    if config.fail_status is not None:
        return Fault("error", config.fail_status)
    if config.hang:
        return Fault("hang")
    if config.drop_after is not None and stream:
        return Fault("drop", after=config.drop_after)
    return None


def _model(config: StubConfig, model: Any) -> str:
    """The requested model, which must be one the stub serves."""
    if isinstance(model, str) and model in config.models:
        return model
    shown = model if isinstance(model, str) else "(missing)"
    raise RequestError(
        404,
        f"The model `{shown}` does not exist.",
        param="model",
        code="model_not_found",
    )


def _chat_prompt(body: dict[str, Any]) -> tuple[str, int]:
    """The messages' text joined by newlines, and its token count."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty array.", param="messages")
    texts = [_message_text(message) for message in messages]
    words = sum(len(text.split()) for text in texts)
    return "\n".join(texts), words + _TOKENS_PER_MESSAGE * len(messages)


def _message_text(message: Any) -> str:
    """A message's content as text: a string, or the text parts of a list."""
    if not isinstance(message, dict):
        raise RequestError(400, "Each message must be an object.", param="messages")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    raise RequestError(400, "A message's content must be a string or an array.", param="messages")


def _completion_prompt(body: dict[str, Any]) -> tuple[str, int]:
    """The prompt as text (a list is joined) and its token count: a string's
    whitespace-separated words, a list of token ids' ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt, len(prompt.split())
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            return " ".join(map(str, prompt)), len(prompt)
        if all(isinstance(item, str) for item in prompt):
            return "\n".join(prompt), sum(len(item.split()) for item in prompt)
    raise RequestError(400, "'prompt' must be a string or an array.", param="prompt")


def _token_ids(prompt: Any) -> bool:
    """Whether a completions ``prompt`` is one list of token ids (counted one an id)."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


def _token_cap(body: dict[str, Any], chat: bool) -> int | None:
    """The request's completion-token limit, if any (``max_completion_tokens`` first)."""
    names = ("max_completion_tokens", "max_tokens") if chat else ("max_tokens",)
    for name in names:
        value = body.get(name)
        if value is not None:
            return _non_negative_int(value, name)
    return None


def _choices(value: Any) -> int:
    """The number of choices ``n``: 1 when absent."""
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():  # vLLM's lax pydantic: 2.0 is 2
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_CHOICES:
        return value
    raise RequestError(400, f"'n' must be an integer from 1 to {_MAX_CHOICES}.", param="n")


def _optional_bool(body: dict[str, Any], name: str) -> bool:
    """A boolean field that defaults to false."""
    value = body.get(name)
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise RequestError(400, f"'{name}' must be a boolean.", param=name)


def _override_int(overrides: dict[str, Any], name: str, default: int) -> int:
    """A non-negative integer override, or ``default`` when absent."""
    value = overrides.get(name)
    return default if value is None else _non_negative_int(value, f"stub.{name}")


def _override_ms(overrides: dict[str, Any], name: str, default: float) -> float:
    """A non-negative millisecond override, or ``default`` when absent."""
    value = overrides.get(name)
    if value is None:
        return default
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise RequestError(400, f"'stub.{name}' must be a non-negative number.", param=f"stub.{name}")


def _non_negative_int(value: Any, param: str) -> int:
    """``value`` if it is an integer >= 0 (booleans are not integers here)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise RequestError(400, f"'{param}' must be a non-negative integer.", param=param)
