"""Integers beyond 64 bits in a JSON body the gateway writes anew, kept exactly.

The JSON parser the gateway uses (orjson) reads an integer outside
``[-2**63, 2**64)`` as a float, and writes none back: a tool schema's ``"maximum":
18446744073709551616`` reached the engine as ``1.8446744073709552e+19``, its
precision lost without a word. A body that goes as the client's bytes keeps its
integers; a body written anew (a renamed model, a rollout's variant, the gateway's
output cap or priority, the usage request, a shadow copy, a Responses conversation)
and the cache key (its canonical body) must write them back as they came: such an
integer is read as an :class:`orjson.Fragment` of its own digits, which orjson writes
back as they came.

Two ways in, by what the caller already has:

* :func:`with_exact_integers` reads a body exactly (a stored Responses record read
  again when a write of it shows ``e+``: :mod:`gateway.responses.encoding`): one pass
  in C over the bytes (its digits mapped to one byte, then a search for a run of 19:
  no integer outside the range has fewer digits); only a body with such a run is
  parsed a second time (by the standard library's parser, which reads integers
  exactly), after orjson has accepted it.
* :func:`encoded_exactly` writes a body the gateway changed (chat, completions,
  embeddings, vLLM's own routes, the cache key): orjson writes it first, and only
  when the result holds ``e+`` (orjson writes every float of 1e16 or more with an
  exponent, so every integer it read as a float shows one) is the source looked at as
  above. A body with no ``+`` costs one ``memchr`` over the bytes just written (about
  0.1 µs for 8 KiB; the pass over the source costs 1-2 ns a byte); that pass is
  left to the rare body with a big number (or text with ``e+`` in it).

A body written more than once from one source (a Responses create: its conversation's
items, then the engine's body around them) reads that source through an
:class:`ExactSource`, which makes its exact reading at most once (the standard
library's parser takes ~0.5 s of the event loop for 20 MB) and hands it to every write
that needs it.

A field the gateway reads itself (``max_tokens``, ``n``, ``seed``, ...) that holds
one is a 400 naming it, before anything is written (chat's validation, and
:mod:`gateway.responses.conversation`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_DIGITS = bytes(0x31 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
"""Maps every ASCII digit to ``1``, every other byte to ``.``."""
_LONG_RUN = b"1" * 19
"""The fewest digits an integer outside ``[-2**63, 2**64)`` has (-9223372036854775809)."""
_SMALLEST, _BEYOND = -(2**63), 2**64
"""What orjson reads as an integer: ``_SMALLEST <= n < _BEYOND``."""
_EXPONENT = b"e+"
"""In orjson's output, the mark of every float of magnitude 1e16 or more (``1e+16``,
``1.8446744073709552e+19``): an integer it read as a float is at least 2**63."""


def with_exact_integers(raw: bytes, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (orjson's reading of ``raw``, a JSON object it accepted), with every
    integer orjson read as a float because it is beyond 64 bits as an
    :class:`orjson.Fragment` of its digits instead; ``body`` itself when ``raw``
    cannot hold one (the usual case)."""
    exact = _exact_reading(raw)
    return exact if isinstance(exact, dict) else body


class ExactSource:
    """A JSON body's bytes (``raw``) and their exact reading (:func:`exact_reading`),
    made at most once, when a write first needs it, then shared by every later one.
    The reading is as large as the body decoded: hold the source no longer than the
    writes that use it."""

    __slots__ = ("_read", "_reading", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._reading: Any = None
        self._read = False

    def reading(self) -> Any:
        """:func:`exact_reading` of ``raw``, read on the first call only."""
        if not self._read:
            self._reading, self._read = _exact_reading(self.raw), True
        return self._reading


def encoded_exactly(body: dict[str, Any], source: bytes | ExactSource) -> bytes:
    """``orjson.dumps(body)``, where ``body`` is orjson's reading of ``source`` (a JSON
    object) as the gateway changed it, with every integer beyond 64 bits it holds
    unchanged from ``source`` written as its digits there, not as orjson's float."""
    encoded = orjson.dumps(body)
    # No float of 1e16 or more (the usual case). ``find`` of one byte is a memchr (about
    # 50 ns for 8 KiB); ``in`` costs more, and "e+" is searched only where a "+" is.
    if encoded.find(b"+") < 0 or _EXPONENT not in encoded:
        return encoded
    exact = source.reading() if isinstance(source, ExactSource) else _exact_reading(source)
    return encoded if exact is None else orjson.dumps(_restored(body, exact))


def shows_big_float(encoded: bytes) -> bool:
    """Whether orjson's output ``encoded`` holds a float of 1e16 or more (``e+``): the
    only bodies in which it may have written an integer beyond 64 bits as a float, so
    the only ones whose source is worth an exact reading (:func:`exact_reading`)."""
    return encoded.find(b"+") >= 0 and _EXPONENT in encoded


def exact_reading(raw: bytes) -> Any:
    """``raw`` read with its integers beyond 64 bits as :class:`orjson.Fragment` of
    their digits; None when it cannot hold one (no run of 19 digits) or does not read."""
    return _exact_reading(raw)


def restored(value: Any, exact: Any) -> Any:
    """``value`` (orjson's reading of a source, perhaps changed since) with each float
    that reads an integer of ``exact`` (:func:`exact_reading` of that source) beyond 64
    bits as that integer's fragment; what was changed stays as it is."""
    return _restored(value, exact)


def is_beyond_64_bits(value: Any) -> bool:
    """Whether ``value`` is an integer :func:`with_exact_integers` kept as its digits."""
    return isinstance(value, orjson.Fragment)


def _exact_reading(raw: bytes) -> Any:
    """``raw`` read with its integers beyond 64 bits as fragments; None when it has no
    run of 19 digits (so none), or does not read (not JSON orjson accepted)."""
    if _LONG_RUN not in raw.translate(_DIGITS):
        return None
    try:
        return json.loads(raw, parse_int=_exact_int)
    except ValueError:
        return None


def _restored(value: Any, exact: Any) -> Any:
    """``value`` (orjson's reading, perhaps changed since) with each float that is still
    orjson's reading of an integer of ``exact`` beyond 64 bits replaced by that integer's
    fragment. What the gateway changed (another value, another shape) stays its own.
    Walks the whole value: only bodies with such an integer come here."""
    if isinstance(exact, orjson.Fragment):
        same = type(value) is float and value == orjson.loads(orjson.dumps(exact))
        return exact if same else value
    if type(value) is dict and type(exact) is dict:
        return {k: _restored(v, exact[k]) if k in exact else v for k, v in value.items()}
    if type(value) is list and type(exact) is list and len(value) == len(exact):
        return [_restored(v, e) for v, e in zip(value, exact, strict=True)]
    return value


def _exact_int(text: str) -> int | orjson.Fragment:
    value = int(text)
    return value if _SMALLEST <= value < _BEYOND else orjson.Fragment(text.encode())
