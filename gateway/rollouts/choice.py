"""Which variant of a rollout answers one request.

A request whose ``model`` is a rollout's name is served by one of its variants:

* a key that carries ``variants: {<rollout>: <variant>}`` (A/B by key group) always
  gets that variant, whatever the weights (even 0): the operator pinned it;
* otherwise the rollout's current weights decide (:class:`RolloutWeights`, read from
  memory on every request; the controller may change them at any time). A variant
  whose weight is 0 never gets traffic;
* with ``sticky: user | session | key``, a stable hash of the body's ``user``, the
  session header or the key's name picks the point on the weight line instead of a
  random draw, so one conversation stays on one variant as long as the weights do
  not change. A request without that value is drawn at random.

The variants are laid on the line in their configured order (never in the order a
weight mapping happens to iterate), so the same hash lands on the same variant on
every gateway replica.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.config.rollouts import RolloutSettings
from gateway.errors import NoEngineAvailableError
from gateway.rollouts.contracts import RolloutWeights

_HASH_SPAN = float(1 << 64)
MAX_STICKY_CHARS = 1024
"""A longer sticky value is hashed by its first this many characters: a hostile
``user`` of megabytes costs no more than a short one."""


class VariantChooser:
    """The variant for a request to a rollout; see the module docstring."""

    def __init__(
        self,
        rollouts: Sequence[RolloutSettings],
        weights: RolloutWeights,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._rollouts = {r.model: r for r in rollouts}
        self._order = {r.model: tuple(v.model for v in r.variants) for r in rollouts}
        self._weights = weights
        self._draw = draw

    def __contains__(self, model: object) -> bool:
        return model in self._rollouts

    @property
    def names(self) -> tuple[str, ...]:
        """Every rollout's name (what clients put in ``model``), in configured order."""
        return tuple(self._rollouts)

    def settings(self, rollout: str) -> RolloutSettings | None:
        return self._rollouts.get(rollout)

    def variants(self, rollout: str) -> tuple[str, ...]:
        """The rollout's variant models, in configured order (empty if unknown)."""
        return self._order.get(rollout, ())

    def choose(
        self,
        rollout: str,
        *,
        user: Any = None,
        session: str | None = None,
        key_name: str | None = None,
        pinned: Mapping[str, str] | None = None,
    ) -> str:
        """The variant model for one request to ``rollout`` (a known rollout name).

        ``user`` is the body's ``user`` field as sent (any JSON type: only a string
        counts), ``session`` the session header, ``key_name`` the caller's key name,
        ``pinned`` the caller's A/B variants. 503 when no variant has any weight."""
        order = self._order[rollout]
        if pinned:
            chosen = pinned.get(rollout)
            if chosen in order:
                assert chosen is not None
                return chosen
        current = self._weights.weights(rollout)
        line = [(name, w) for name in order if (w := _weight(current.get(name))) > 0]
        total = sum(w for _, w in line)
        if total <= 0:
            raise NoEngineAvailableError(
                f"every variant of `{rollout}` has weight 0; nothing can serve it now"
            )
        sticky = self._sticky_value(rollout, user, session, key_name)
        point = (sticky_point(rollout, sticky) if sticky is not None else self._draw()) * total
        for name, weight in line:
            if point < weight:
                return name
            point -= weight
        return line[-1][0]  # rounding at the very end of the line

    def _sticky_value(
        self, rollout: str, user: Any, session: str | None, key_name: str | None
    ) -> str | None:
        by = self._rollouts[rollout].sticky
        if by == "user":
            return user if isinstance(user, str) and user else None
        if by == "session":
            return session or None
        if by == "key":
            return key_name or None
        return None


def sticky_point(rollout: str, value: str) -> float:
    """Where ``value`` lands on ``rollout``'s weight line, in [0, 1): the same on every
    replica and every run (a keyed BLAKE2b, not Python's salted ``hash``). The rollout
    is part of the input, so two rollouts split the same users independently."""
    data = value[:MAX_STICKY_CHARS].encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8, key=rollout.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


def _weight(value: object) -> float:
    """A weight as a usable number: anything else (absent, negative, NaN) is 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 0.0
