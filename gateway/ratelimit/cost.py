"""What a request asks of a token limit: its prompt, the output it wants per choice,
and how many choices the engine generates (:class:`Cost`).

Read from a body that may not have been validated yet, so nothing here raises:
wrong types count as absent. An out-of-range ask for output is clamped where no limit
could tell the difference, which keeps the backends' arithmetic exact. The number of
choices never is: the engine generates every one of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import orjson

MAX_WANTED = 1 << 30
"""Output tokens per choice a request may ask to reserve (larger asks are this many:
no limit comes near it, and the backends' arithmetic stays exact)."""
MAX_USAGE = 1 << 32
"""The most tokens an engine's ``usage`` may report for one request and be believed
(4.3 billion: hundreds of times any model's context, so no real answer comes near it).
A count above it, negative, or not an integer is unknown: the request keeps its
reservation (:meth:`gateway.ratelimit.admission.Admission.settle`). It also keeps the
limiter's sums exact (Redis's Lua counts in doubles)."""


def believable(count: Any) -> int | None:
    """``count`` if it is an integer (not a bool) from 0 to :data:`MAX_USAGE`, else None
    (unknown: whoever settles with it keeps the reservation)."""
    return count if type(count) is int and 0 <= count <= MAX_USAGE else None


CHARS_PER_TOKEN = 4
"""The prompt estimate's rate: characters (of text, or of a structured field's JSON)
per token."""
MEDIA_PART_TOKENS = 1024
"""What one non-text content part (an image, audio, video or file part: anything without
a string ``text``) is estimated at, plus one token per :data:`MEDIA_CHARS_PER_TOKEN`
characters of its JSON: about what one image costs the vision models vLLM serves,
whatever its bytes (the engine resizes it), growing with long audio or video. Priced at
text's rate, a 200 KB ``data:`` image would reserve ~67k tokens and one photo would
exceed a small ``tpm`` outright; the answer's usage settles the difference anyway."""
MEDIA_CHARS_PER_TOKEN = 1024
MESSAGE_FRAMING_CHARS = 16
"""What each chat message adds to the estimate besides its fields: its role and the
template's markers around it, in characters at :data:`CHARS_PER_TOKEN`."""
PROMPT_FRAMING_CHARS = 8
"""What each prompt of a list (completions' ``prompt``, embeddings' ``input``) adds to
the estimate besides its text: the engine frames every sequence with its special
tokens (BOS and EOS, an encoder's CLS and SEP), two tokens at :data:`CHARS_PER_TOKEN`.
Priced by its text alone, 10,000 one-letter inputs were estimated at 2,500 tokens (and
one output token each) and an encoder counted 30,000 (bug hunt). A single prompt costs
what it always did: one framing is noise, 10,000 are not."""
EMBEDS_CHARS_PER_TOKEN = 512
"""``prompt_embeds`` (base64 of a tensor, one row per token): characters of base64 per
token. A row is the model's hidden size in 2- or 4-byte floats, at least ~384 bytes
(512 base64 characters) for any real model, so this over-counts rather than under."""


class Cost(NamedTuple):
    """What a request asks of a token limit: its prompt (an estimate), the output it
    wants per choice, and how many choices the engine generates."""

    prompt: int
    wanted: int
    choices: int

    @property
    def most(self) -> int:
        """Everything it may use if granted all it wants."""
        return self.prompt + self.wanted * self.choices


def request_cost(body: dict[str, Any], default_max_tokens: int) -> Cost:
    """A request's :class:`Cost`, from a body that may not have been validated yet
    (wrong types count as absent; nothing here raises).

    The prompt is about :data:`CHARS_PER_TOKEN` characters a token, plus a few per chat
    message, over everything the engine puts in front of the model: the messages' text
    (string contents and the text of their text parts: :data:`TEXT_PART_FIELDS`), an
    assistant message's ``tool_calls``, a message's every other field but its role (an assistant's
    ``reasoning``, ``name``, ...: :func:`_other_fields_chars`), ``tools``, vLLM's
    ``documents`` and ``chat_template_kwargs`` (those three by the length of their
    JSON), each non-text content part (image, audio, video, file: see
    :data:`MEDIA_PART_TOKENS`) and ``prompt`` (each prompt of a list plus
    :data:`PROMPT_FRAMING_CHARS`); token-id prompts count one per id, and
    ``prompt_embeds`` one per :data:`EMBEDS_CHARS_PER_TOKEN` characters. A chat body
    with only string contents costs what it always did: a few lookups, no encoding.

    ``wanted`` is ``max_completion_tokens`` (chat) or ``max_tokens``, else
    ``default_max_tokens``. ``choices`` is every prompt of a completions list (strings,
    lists of token ids, or ``prompt_embeds``) times the larger of ``n`` and
    ``best_of``: the engine generates that many sequences."""
    text, framing, tokens, prompts = _walk(body)
    wanted = wanted_tokens(body, default_max_tokens)
    n = _count(body.get("n")) or 1
    sequences = max(n, _count(body.get("best_of")))
    # Never clamped: clamped (at 65,536), 2,000 prompts x n=64 were granted output for
    # 65,536 sequences, and the engine made it for 128,000 (bug hunt). Exact anyway:
    # a body holds at most some millions of prompts, and an admission's reservation
    # (prompt + choices x granted) never exceeds its tpm.
    choices = (prompts or 1) * sequences
    prompt_tokens = -(-(text + framing) // CHARS_PER_TOKEN) + tokens
    return Cost(prompt_tokens, wanted, choices)


def priced_text_chars(body: dict[str, Any]) -> int:
    """The characters of text :func:`request_cost` prices in ``body`` at
    :data:`CHARS_PER_TOKEN`: the messages' text and every other field of theirs but the
    role, ``tool_calls``, ``tools``, ``documents``, ``chat_template_kwargs`` (those by
    their JSON) and the text prompts; not the framing it adds, media parts, token ids
    or ``prompt_embeds``. ``server.max_prompt_chars`` caps it
    (:mod:`gateway.pipeline.plan`): counted by the same walk, the cap bounds every
    character the estimate is made of (it counted contents and prompts only, so a
    request carried unbounded ``reasoning``, ``name`` or ``tools`` past it)."""
    return _walk(body)[0]


def _walk(body: dict[str, Any]) -> tuple[int, int, int, int]:
    """One pass over what a request puts in front of the model: ``(text, framing,
    tokens, prompts)``: characters of text (:func:`priced_text_chars`), characters the
    estimate adds besides (each message's :data:`MESSAGE_FRAMING_CHARS`, each listed
    prompt's :data:`PROMPT_FRAMING_CHARS`, media parts), tokens counted as such (token
    ids, ``prompt_embeds``) and how many prompts a completions body holds."""
    text = 0
    framing = 0
    tokens = 0
    prompts = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        framing = MESSAGE_FRAMING_CHARS * len(messages)  # role and framing
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                text += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict):
                        rendered = part_text(part)
                        if rendered is not None:
                            text += len(rendered)
                        else:
                            framing += _media_chars(part)
            if "tool_calls" in message:
                text += _structured_chars(message["tool_calls"])
            if len(message) > 2:  # more than a role and a content: one dict walk
                text += _other_fields_chars(message)
    tools = body.get("tools")
    if tools:
        text += _structured_chars(tools)
    documents = body.get("documents")
    if documents:
        text += _structured_chars(documents)
    template_kwargs = body.get("chat_template_kwargs")
    if template_kwargs:  # vLLM lets them override what the template gets (tools, ...)
        text += _json_chars(template_kwargs) if isinstance(template_kwargs, dict) else 0
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        text += len(prompt)
        prompts = 1
    elif isinstance(prompt, list) and prompt:
        if isinstance(prompt[0], int):  # one prompt of token ids
            tokens = len(prompt)
            prompts = 1
        else:  # several prompts: strings (each framed by the engine) or lists of token ids
            prompts = len(prompt)
            for p in prompt:
                if isinstance(p, str):
                    text += len(p)
                    framing += PROMPT_FRAMING_CHARS
                else:
                    tokens += _length(p)
    embeds = body.get("prompt_embeds")
    if embeds:
        if isinstance(embeds, str):
            tokens += -(-len(embeds) // EMBEDS_CHARS_PER_TOKEN)
            prompts += 1
        elif isinstance(embeds, list):
            prompts += len(embeds)
            tokens += sum(-(-_text_length(e) // EMBEDS_CHARS_PER_TOKEN) for e in embeds)
    return text, framing, tokens, prompts


def wanted_tokens(body: dict[str, Any], default_max_tokens: int) -> int:
    """Output tokens per choice ``body`` asks to reserve (:attr:`Cost.wanted`):
    ``max_completion_tokens`` (chat) or ``max_tokens``, else ``default_max_tokens``."""
    wanted = _count(body.get("max_completion_tokens")) or _count(body.get("max_tokens"))
    return min(wanted or default_max_tokens, MAX_WANTED)


def estimate_tokens(body: dict[str, Any], default_max_tokens: int) -> int:
    """Tokens a request may use if granted all it wants: the prompt and the completion
    budget of every choice (:func:`request_cost`)."""
    return request_cost(body, default_max_tokens).most


def _count(value: Any) -> int:
    """``value`` if it is a positive integer (not a bool), else 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 1


def _text_length(value: Any) -> int:
    return len(value) if isinstance(value, str) else 0


TEXT_PART_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "text": "text",
        "input_text": "text",
        "output_text": "text",
        "refusal": "refusal",
        "thinking": "thinking",
        "summary_text": "text",  # (the Responses API's reasoning items)
        "reasoning_text": "text",
    }
)
"""The content parts vLLM renders as text, by ``type``: the field that holds the text.
vLLM reads a part by its ``type`` alone: an image part's ``text`` is not rendered (it
was priced as the part's text, an image with ``"text": ""`` at nothing), and a
``refusal`` or ``thinking`` part's text is (it was priced as an image: 100 KB of
text at ~1,100 tokens, past ``server.max_prompt_chars`` too)."""


def part_text(part: dict[str, Any]) -> str | None:
    """A content part's rendered text (a part without ``type`` read as a text part),
    or None for a part that is not text (an image, audio, video or file part)."""
    kind = part.get("type", "text")
    field = TEXT_PART_FIELDS.get(kind) if isinstance(kind, str) else None
    value = part.get(field) if field is not None else None
    return value if isinstance(value, str) else None


def _media_chars(part: dict[str, Any]) -> int:
    """A content part without text (an image, audio, video or file part), in characters
    at :data:`CHARS_PER_TOKEN`: :data:`MEDIA_PART_TOKENS` and one per
    :data:`MEDIA_CHARS_PER_TOKEN` of its JSON."""
    tokens = MEDIA_PART_TOKENS + _json_chars(part) // MEDIA_CHARS_PER_TOKEN
    return tokens * CHARS_PER_TOKEN


_PRICED_APART = frozenset({"role", "content", "tool_calls"})
"""A chat message's fields :func:`request_cost` prices on their own (or not at all)."""


def _other_fields_chars(message: dict[str, Any]) -> int:
    """Characters of a chat message's fields besides its role, content and tool calls:
    vLLM hands them to the chat template (an assistant's ``reasoning``, copied to
    ``reasoning_content``, which Qwen3's and DeepSeek's templates render; ``name``,
    ``tool_call_id``, ...): a string by its length, anything structured by its JSON's.
    Unpriced, a hostile tenant sent a context's worth of ``reasoning`` as a few tokens
    (bug hunt)."""
    chars = 0
    for name, value in message.items():
        if name in _PRICED_APART or value is None:
            continue
        chars += len(value) if isinstance(value, str) else _json_chars(value)
    return chars


def _structured_chars(value: Any) -> int:
    """A structured field's characters: its JSON's length when it is a (non-empty)
    list, as ``tools``, ``tool_calls`` and ``documents`` are; 0 for anything else."""
    return _json_chars(value) if isinstance(value, list) and value else 0


def _json_chars(value: Any) -> int:
    """The length of ``value``'s JSON (what a chat template renders of a structured
    field), in one C call; a value orjson cannot write (never one decoded from a
    request) counts by its ``str``."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return len(str(value))
