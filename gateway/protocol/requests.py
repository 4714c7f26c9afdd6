"""OpenAI request models: the fields the gateway reads, validated; every other field
passes through untouched (``extra="allow"``), so vLLM's own parameters (``top_k``,
``min_p``, ``prompt_embeds``, ``return_token_ids``, ...) reach the engine, which
judges them.

Validation is as lenient as vLLM's own (its pydantic models are not strict): an
integral float is an integer (``seed: 1.0``); a fractional ``n`` (``1.5``) is a 400
naming the field, as vLLM's would be. The booleans the gateway acts on (``stream``,
``stream_options.include_usage`` and ``.continuous_usage_stats``) are the exception:
they must be JSON booleans, as the OpenAI API requires (``StrictBool``): a lax
``"yes"``, ``"true"`` or ``1`` would decide whether an answer streams, whether a stream
ends with usage, and which cache entry answers it. The gateway never
computes with what the client wrote: :func:`gateway.pipeline.parsing.normalized`
puts the validated values (``n: 2`` for ``2.0``) into the body the rate limits,
the cache and routing read. Only the fields the gateway uses are checked:
``model``, ``stream``/``stream_options``, the messages' shape (size limits,
affinity), the prompt or input, and the counts a rate-limit reservation reads
(``n``, ``best_of``, ``max_tokens``, ``max_completion_tokens``), plus ``seed``
and ``temperature`` (the cache's notion of deterministic). Bounds are vLLM's.

Lists a client may make long (token ids, prompts, content parts) are checked by
:func:`_checked`, not by pydantic's union: a union tries every form on every item
and records an error per item of each form that fails, so 4 million token ids cost
seconds inside one C call (holding the GIL: even a thread stalls the event loop) and
gigabytes of error objects. The check is one pass in Python over items of the
expected type; only a short list that fails it goes to pydantic, for the exact
(lenient) verdict and message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    TypeAdapter,
    field_validator,
)

_INT64 = 2**63


_EXACT_CHECK_ITEMS = 1024
"""Lists up to this long that fail the fast check get pydantic's own verdict (it admits
``1.0`` as a token id, as vLLM does); longer ones are refused at the first odd item."""


def _checked(adapter: TypeAdapter[Any], fits: Any, what: str) -> PlainValidator:
    """A validator that accepts ``value`` when ``fits(value)`` (one pass, exact types),
    else asks ``adapter`` when the value is small, else refuses it naming ``what``."""

    def check(value: Any) -> Any:
        if fits(value):
            return value
        if not isinstance(value, list) or len(value) <= _EXACT_CHECK_ITEMS:
            return adapter.validate_python(value)
        raise ValueError(f"must be {what}")

    return PlainValidator(check)


def _ints(items: list[Any]) -> bool:
    return all(type(item) is int for item in items)


def _fits_prompt(value: Any) -> bool:
    """``str | list[str] | list[int] | list[list[int]]`` with exact types."""
    if value is None or type(value) is str:
        return True
    if type(value) is not list or not value:
        return False
    first = type(value[0])
    if first is str:
        return all(type(item) is str for item in value)
    if first is int:
        return _ints(value)
    return all(type(item) is list and _ints(item) for item in value)


def _fits_content(value: Any) -> bool:
    """``str | list[dict] | None`` with exact types."""
    return (
        value is None
        or type(value) is str
        or (type(value) is list and all(type(part) is dict for part in value))
    )


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StreamOptions(_Passthrough):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class ChatMessage(_Passthrough):
    role: str
    """Any string, not only OpenAI's six: vLLM enables custom roles (its
    ``CustomChatCompletionMessageParam``, e.g. ``ipython`` for tool output), and the
    model's chat template decides what they mean."""
    content: Annotated[
        str | list[dict[str, Any]] | None,
        _checked(
            TypeAdapter(str | list[dict[str, Any]] | None),
            _fits_content,
            "a string or a list of content parts (objects)",
        ),
    ] = None


class _RequestFields(_Passthrough):
    """Fields every routed request has."""

    model: str = Field(min_length=1)
    user: str | None = None


class _SamplingFields(_RequestFields):
    """Fields shared by chat and text completions."""

    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1, le=128)
    best_of: int | None = Field(None, ge=1, le=128)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)


TokenPrompt = Annotated[
    str | list[str] | list[int] | list[list[int]],
    _checked(
        TypeAdapter(str | list[str] | list[int] | list[list[int]]),
        _fits_prompt,
        "a string, a list of strings, a list of token ids or a list of lists of token ids",
    ),
]


class CompletionRequest(_SamplingFields):
    prompt: TokenPrompt | None = None
    """Optional: a request may carry ``prompt_embeds`` instead (the engine checks
    that it has one or the other)."""

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[Any] | None) -> str | list[Any] | None:
        """A list of prompts, or of token ids, holds at least one (as vLLM requires)."""
        if isinstance(prompt, list) and (not prompt or any(p == [] for p in prompt)):
            raise ValueError("a prompt list (and each list of token ids in it) must not be empty")
        return prompt


class EmbeddingRequest(_RequestFields):
    """``/v1/embeddings``: never streamed. ``input`` may be absent when the request
    is vLLM's chat form (``messages``); the engine judges."""

    input: TokenPrompt | None = None
    messages: list[ChatMessage] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    """OpenAI's two. vLLM's binary forms (``bytes``, ``bytes_only``) answer raw bytes
    described in a ``metadata`` header, neither of which the gateway relays: refused."""
    dimensions: int | None = Field(None, ge=1)

    @property
    def stream(self) -> bool:
        return False

    @field_validator("input")
    @classmethod
    def _not_empty(cls, value: str | list[Any] | None) -> str | list[Any] | None:
        """A list of inputs, or of token ids, holds at least one."""
        if isinstance(value, list) and (not value or any(p == [] for p in value)):
            raise ValueError("an input list (and each list of token ids in it) must not be empty")
        return value


NORMALIZED_FIELDS = (
    "n",
    "best_of",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "temperature",
    "dimensions",
)
"""Fields whose validated value replaces the client's in the body the gateway reads
(``stream`` is not one: being strict, its validated value is the client's)."""
