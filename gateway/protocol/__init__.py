"""OpenAI wire models (pydantic only; imports nothing else of ours)."""

from gateway.protocol.requests import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    StreamOptions,
)

__all__ = ["ChatCompletionRequest", "ChatMessage", "CompletionRequest", "StreamOptions"]
