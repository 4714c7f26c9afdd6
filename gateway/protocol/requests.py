"""OpenAI request models: the fields the gateway reads, validated; every other field
passes through untouched (``extra="allow"``), so vLLM's own sampling parameters
(``top_k``, ``min_p``, ``ignore_eos``, ...) reach the engine.

Validation is strict (no string-to-number coercion), as OpenAI's API is: a wrong
type is a 400 naming the field, never a silently different request. Bounds are
the ones vLLM enforces (``seed`` a signed 64-bit integer, ``n`` and ``best_of`` at
least 1, prompts not empty), so what the gateway admits an engine accepts, and
what the gateway computes from these fields (rate-limit reservations, affinity
keys) never meets a value of the wrong kind.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

_INT64 = 2**63


class _Passthrough(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class StreamOptions(_Passthrough):
    include_usage: bool | None = None


class ChatMessage(_Passthrough):
    role: str
    """Any string, not only OpenAI's six: vLLM enables custom roles (its
    ``CustomChatCompletionMessageParam``, e.g. ``ipython`` for tool output), and the
    model's chat template decides what they mean."""
    content: str | list[dict[str, Any]] | None = None


class _SamplingFields(_Passthrough):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    best_of: int | None = Field(None, ge=1, le=128)
    seed: int | None = Field(None, ge=-_INT64, lt=_INT64)
    stop: str | list[str] | None = None
    user: str | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: str | list[Any]) -> str | list[Any]:
        """A list of prompts, or of token ids, holds at least one (as vLLM requires)."""
        if isinstance(prompt, list) and (not prompt or any(p == [] for p in prompt)):
            raise ValueError("a prompt list (and each list of token ids in it) must not be empty")
        return prompt
