"""OpenAI wire models (pydantic only; imports nothing else of ours), and the exact
reading of a JSON body's big integers (:mod:`gateway.protocol.exact_json`, orjson)."""

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
