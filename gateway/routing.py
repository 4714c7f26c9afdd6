"""Routing policies: pure choices over an immutable snapshot of a model's engines.

A policy never sees live objects, so it can be tested with plain tuples and can
never mutate the pool while choosing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EndpointView:
    """What a policy may know about one engine at the moment of choosing."""

    url: str
    in_flight: int
    healthy: bool


class RoutingPolicy(Protocol):
    def choose(self, candidates: Sequence[EndpointView]) -> EndpointView:
        """Pick one of ``candidates`` (never empty)."""
        ...


class RoundRobin:
    """Each engine in turn, regardless of load."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[EndpointView]) -> EndpointView:
        return candidates[next(self._turn) % len(candidates)]


class LeastOutstanding:
    """The engine with the fewest requests in flight; ties rotate so idle engines share work."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[EndpointView]) -> EndpointView:
        if len(candidates) == 1:
            return candidates[0]
        least = min(view.in_flight for view in candidates)
        tied = [view for view in candidates if view.in_flight == least]
        return tied[next(self._turn) % len(tied)]


def build_policy(name: str) -> RoutingPolicy:
    """The policy named in ``routing.policy``."""
    policies: dict[str, type[RoundRobin] | type[LeastOutstanding]] = {
        "round_robin": RoundRobin,
        "least_outstanding": LeastOutstanding,
    }
    try:
        return policies[name]()
    except KeyError:
        raise ValueError(f"unknown routing policy {name!r}") from None
