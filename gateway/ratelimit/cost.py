"""What a request asks of a token limit: its prompt, the output it wants per choice,
and how many choices the engine generates (:class:`Cost`).

Read from a body that may not have been validated yet, so nothing here raises:
wrong types count as absent. Out-of-range asks are clamped where no limit could
tell the difference, which keeps the backends' arithmetic exact.
"""

from __future__ import annotations

from typing import Any, NamedTuple

MAX_WANTED = 1 << 30
"""Output tokens per choice a request may ask to reserve (larger asks are this many:
no limit comes near it, and the backends' arithmetic stays exact)."""
MAX_CHOICES = 1 << 16


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

    The prompt is about 4 characters a token, plus a few per chat message; token-id
    prompts count one per id. ``wanted`` is ``max_completion_tokens`` (chat) or
    ``max_tokens``, else ``default_max_tokens``. ``choices`` is every prompt of a
    completions list (strings, or lists of token ids) times the larger of ``n`` and
    ``best_of``: the engine generates that many sequences."""
    chars = 0
    prompts = 1
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            chars += 16  # role and framing
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list) and prompt:
        if isinstance(prompt[0], int):  # one prompt of token ids
            chars += 4 * len(prompt)
        else:  # several prompts: strings or lists of token ids
            prompts = len(prompt)
            chars += sum(len(p) if isinstance(p, str) else 4 * _length(p) for p in prompt)
    wanted = _count(body.get("max_completion_tokens")) or _count(body.get("max_tokens"))
    n = _count(body.get("n")) or 1
    sequences = max(n, _count(body.get("best_of")))
    choices = min(prompts * sequences, MAX_CHOICES)
    return Cost((chars + 3) // 4, min(wanted or default_max_tokens, MAX_WANTED), choices)


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
