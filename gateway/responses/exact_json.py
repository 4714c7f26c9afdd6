"""Integers beyond 64 bits in a ``/v1/responses`` body, kept exactly.

The JSON parser the gateway uses (orjson) reads an integer outside
``[-2**63, 2**64)`` as a float, and writes none back: a tool schema's ``"maximum":
18446744073709551616`` reached the engine as ``1.8446744073709552e+19``, its
precision lost without a word. A chat request's body reaches the engine as the
client's bytes, so its integers do; a Responses body is always written anew (the
conversation, the gateway's ``request_id``, ``store: false``), so its integers must
survive the round trip: such an integer is read as an :class:`orjson.Fragment` of
its own digits, which orjson writes back as they came.

Finding them costs one pass in C over the body (its digits mapped to one byte, then
a search for a run of 19: no integer outside the range has fewer digits); only a
body with such a run is parsed a second time (by the standard library's parser,
which reads integers exactly), after orjson has already accepted it as JSON.
A field the gateway reads itself (``max_output_tokens``, ``seed``, ...) that holds
one is a 400 (:mod:`gateway.responses.conversation`), as chat's would be.
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


def with_exact_integers(raw: bytes, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` (orjson's reading of ``raw``, a JSON object it accepted), with every
    integer orjson read as a float because it is beyond 64 bits as an
    :class:`orjson.Fragment` of its digits instead; ``body`` itself when ``raw``
    cannot hold one (the usual case)."""
    if _LONG_RUN not in raw.translate(_DIGITS):
        return body
    exact = json.loads(raw, parse_int=_exact_int)
    return exact if isinstance(exact, dict) else body


def is_beyond_64_bits(value: Any) -> bool:
    """Whether ``value`` is an integer :func:`with_exact_integers` kept as its digits."""
    return isinstance(value, orjson.Fragment)


def _exact_int(text: str) -> int | orjson.Fragment:
    value = int(text)
    return value if _SMALLEST <= value < _BEYOND else orjson.Fragment(text.encode())
