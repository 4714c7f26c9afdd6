"""What the request path and the rollout controller agree on.

The request path (variant choice, shadow copies) reads the current weights
through :class:`RolloutWeights` and reports each finished request through
:class:`VariantObserver`; the controller implements both, keeping the weights
shared through the state backend. :class:`ConfigWeights` serves the configured
weights when no controller runs (and in unit tests).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.config.rollouts import RolloutSettings


class RolloutWeights(Protocol):
    def weights(self, rollout: str) -> Mapping[str, float]:
        """The rollout's current weights by variant model (answered from memory: it
        runs on every request). Unknown rollout: empty."""
        ...


class VariantObserver(Protocol):
    def observe(
        self,
        rollout: str,
        variant: str,
        *,
        failed: bool,
        ttft_s: float | None,
        itl_s: float | None,
    ) -> None:
        """One request served by ``variant`` ended: ``failed`` for a 5xx or a failure the
        engine caused (never for the client's own 4xx), its time to first token and mean
        inter-token latency when known (a JSON answer arrives whole: its latency is its
        time to first token). Must not block (it runs on the request path)."""
        ...


class ConfigWeights:
    """The weights as configured, never changed."""

    def __init__(self, rollouts: Sequence[RolloutSettings]) -> None:
        self._weights = {r.model: {v.model: v.weight for v in r.variants} for r in rollouts}

    def weights(self, rollout: str) -> Mapping[str, float]:
        return self._weights.get(rollout, {})


class NoObserver:
    def observe(
        self,
        rollout: str,
        variant: str,
        *,
        failed: bool,
        ttft_s: float | None,
        itl_s: float | None,
    ) -> None:
        return None
