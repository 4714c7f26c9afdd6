"""OpenAI wire models (pydantic only; imports nothing else of ours)."""

from gateway.protocol.requests import (
    NORMALIZED_FIELDS,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    StreamOptions,
)

__all__ = [
    "NORMALIZED_FIELDS",
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingRequest",
    "StreamOptions",
]
