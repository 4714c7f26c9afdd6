"""OpenAI request models: the fields the gateway reads, validated; every other field
passes through untouched (``extra="allow"``), so vLLM's own parameters (``top_k``,
``min_p``, ``prompt_embeds``, ``return_token_ids``, ...) reach the engine, which
judges them.

Validation is as lenient as vLLM's own (its pydantic models are not strict): an
integral float is an integer (``seed: 1.0``), ``"true"`` a boolean; a fractional
``n`` (``1.5``) is a 400 naming the field, as vLLM's would be. The gateway never
computes with what the client wrote: :func:`gateway.pipeline.parsing.normalized`
puts the validated values (``n: 2`` for ``2.0``) into the body the rate limits,
the cache and routing read. Only the fields the gateway uses are checked:
``model``, ``stream``/``stream_options``, the messages' shape (size limits,
affinity), the prompt or input, and the counts a rate-limit reservation reads
(``n``, ``best_of``, ``max_tokens``, ``max_completion_tokens``), plus ``seed``
and ``temperature`` (the cache's notion of deterministic). Bounds are vLLM's.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_INT64 = 2**63


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class StreamOptions(_Passthrough):
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ChatMessage(_Passthrough):
    role: str
    """Any string, not only OpenAI's six: vLLM enables custom roles (its
    ``CustomChatCompletionMessageParam``, e.g. ``ipython`` for tool output), and the
    model's chat template decides what they mean."""
    content: str | list[dict[str, Any]] | None = None


class _RequestFields(_Passthrough):
    """Fields every routed request has."""

    model: str = Field(min_length=1)
    user: str | None = None


class _SamplingFields(_RequestFields):
    """Fields shared by chat and text completions."""

    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0)
    n: int | None = Field(None, ge=1, le=128)
    best_of: int | None = Field(None, ge=1, le=128)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)


TokenPrompt = str | list[str] | list[int] | list[list[int]]


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
    encoding_format: str | None = None
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
    "stream",
    "n",
    "best_of",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "temperature",
    "dimensions",
)
"""Fields whose validated value replaces the client's in the body the gateway reads."""
