"""OpenAI request models: the fields the gateway reads, validated; every other field
passes through untouched (``extra="allow"``), so vLLM's own sampling parameters
(``top_k``, ``min_p``, ``ignore_eos``, ...) reach the engine.

Validation is strict (no string-to-number coercion), as OpenAI's API is: a wrong
type is a 400 naming the field, never a silently different request.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    seed: int | None = None
    stop: str | list[str] | None = None


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
