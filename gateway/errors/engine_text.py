"""What of an engine's error answer reaches the client, as text: its ``Retry-After``
and ``retry-after-ms`` (:func:`relayed_retry_after`) and its message with the
engine-side names of the model written as the client's (:func:`hide_names`). Pure
functions over untrusted text, linear in what they read; part of
:mod:`gateway.errors`, so nothing else of ours is imported here.
"""

from __future__ import annotations

MAX_RETRY_AFTER_S = 3600
"""The longest engine ``Retry-After`` relayed (seconds); a longer one is dropped."""


def relayed_retry_after(
    value: bytes | str | None, value_ms: bytes | str | None = None
) -> dict[str, str]:
    """An engine's ``Retry-After`` (``value``) and ``retry-after-ms`` (``value_ms``) as
    the client gets them, each on its own: a whole number (0 to
    :data:`MAX_RETRY_AFTER_S` seconds, or as many milliseconds), written anew from the
    number; an HTTP-date, a fraction, a value out of range or anything else is dropped
    (never relayed as it came: header injection). The SDKs read ``retry-after-ms``
    first."""
    relayed: dict[str, str] = {}
    seconds = _whole_number(value, MAX_RETRY_AFTER_S)
    if seconds is not None:
        relayed["Retry-After"] = str(seconds)
    millis = _whole_number(value_ms, MAX_RETRY_AFTER_S * 1000)
    if millis is not None:
        relayed["retry-after-ms"] = str(millis)
    return relayed


def _whole_number(value: bytes | str | None, most: int) -> int | None:
    """``value`` as ASCII digits (spaces and tabs around them) worth at most ``most``."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip(" \t")
    if not (0 < len(text) <= 10 and text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if number <= most else None


def hide_names(message: str, names: tuple[str, ...], public: str, limit: int) -> str:
    """The first ``limit`` characters of ``message`` with each whole occurrence of
    ``names`` (not inside a longer word: ``llama`` is not hidden in ``llama2``, nor
    ``model`` in ``models``) written as ``public``; the longest name wins where two
    begin at the same place, and ``public`` itself stays as it is (``llama`` is not
    hidden again in ``llama-chat``, the client's name). Linear in ``limit`` per name,
    however large and hostile the message: it is read only up to ``limit`` plus the
    longest name (so a name that begins before ``limit`` is seen whole), and text from
    there on is never shown (shifted left by shorter replacements, part of a name could
    come into view)."""
    hidden = [name for name in dict.fromkeys(names) if name and name != public]
    if not hidden:
        return message[:limit]
    text = message[: limit + max(map(len, hidden))]
    spans: list[tuple[int, int]] = []
    for name in (*hidden, public):
        start = text.find(name)
        while 0 <= start < limit:
            end = start + len(name)
            if _whole(text, name, start, end):
                spans.append((start, -end))
            start = text.find(name, start + 1)
    parts: list[str] = []
    shown = 0
    for start, negative_end in sorted(spans):
        if start >= shown:
            parts += (text[shown:start], public)
            shown = -negative_end
    if shown < limit:
        parts.append(text[shown:limit])
    return "".join(parts)


def _whole(text: str, name: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` (which is ``name``) is not part of a longer word: a
    name that begins (ends) with a word character follows (precedes) none."""
    if start and _word(name[0]) and _word(text[start - 1]):
        return False
    return not (end < len(text) and _word(name[-1]) and _word(text[end]))


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"
