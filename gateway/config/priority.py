"""Priority tiers: the names keys and clients may use, and the vLLM numbers they stand for.

One scale everywhere, vLLM's: a *lower* number is served *earlier* (vLLM's
``--scheduling-policy priority`` sorts waiting requests by ``(priority,
arrival)``), and 0 is vLLM's default. The gateway's admission queue orders its
waiters by the same number, so the order a key gets at the gateway is the order
it gets inside the engine.

The named tiers sit 10 apart (``high`` = -10, ``normal`` = 0, ``low`` = 10) so
an operator can place a key between two of them with a plain integer (5: after
``normal``, before ``low``). A key without a priority is ``normal`` (0), which is
also what vLLM assumes for a request without one, so keys that never heard of
tiers keep behaving exactly as before.

Numbers are bounded (:data:`PRIORITY_MIN` .. :data:`PRIORITY_MAX`, a signed 32-bit
range): every vLLM accepts them (it takes a 64-bit one) and a hostile value can
never be huge. This module sits in ``gateway.config`` because the config file,
the key records, the admin API and the request header all parse the same
spellings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType

TIERS: Mapping[str, int] = MappingProxyType({"high": -10, "normal": 0, "low": 10})
"""The named tiers and the vLLM priority each stands for (lower: earlier)."""

DEFAULT_PRIORITY = TIERS["normal"]
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1
_MAX_TEXT = 16
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
"""What an integer priority looks like as text: ASCII digits only (``int`` alone also
reads full-width and other Unicode digits and ``_`` separators)."""
"""Longest spelling looked at: ``-2147483648`` is 11 characters; anything longer is refused."""


def parse_priority(value: object) -> int:
    """The vLLM priority ``value`` names: ``high``/``normal``/``low`` (any case), an
    integer, or an integer written as text (``"5"``, ``" -3 "``).

    Raises ValueError for anything else: a boolean, a float, an empty or overlong
    string, a number outside :data:`PRIORITY_MIN` .. :data:`PRIORITY_MAX`."""
    if isinstance(value, bool):
        raise ValueError("a priority is high, normal, low or an integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > _MAX_TEXT:
            raise ValueError("a priority is high, normal, low or an integer")
        named = TIERS.get(text.lower())
        if named is not None:
            return named
        if _INTEGER.fullmatch(text) is None:
            raise ValueError(f"invalid priority {text!r}: use high, normal, low or an integer")
        number = int(text, 10)
    else:
        raise ValueError("a priority is high, normal, low or an integer")
    if not PRIORITY_MIN <= number <= PRIORITY_MAX:
        raise ValueError(f"a priority lies between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return number


def tier_name(priority: int) -> str | None:
    """The tier's name when ``priority`` is one of the named ones (for listings)."""
    for name, number in TIERS.items():
        if number == priority:
            return name
    return None


def lowered(granted: int, requested: int | None) -> int:
    """The priority a request runs at: what its key was granted, or a *later* one the
    client asked for; never an earlier one (a client may only lower its own request)."""
    return granted if requested is None else max(granted, requested)


def tiers_reach_engines(switch: bool | None, key_priorities: Iterable[int]) -> bool:
    """Whether requests carry their priority to vLLM (and managed engines schedule by
    it): ``routing.priority_tiers`` when set, else whether any configured key has a
    tier other than ``normal``."""
    if switch is not None:
        return switch
    return any(p != DEFAULT_PRIORITY for p in key_priorities)
