"""Routing policies: pure choices over an immutable snapshot of a model's engines.

A policy never sees live objects, so it can be tested with plain tuples and can
never mutate the pool while choosing.

Prefix / session affinity: vLLM's prefix cache only pays off when requests that
share a prefix land on the engine that already holds it. Each request carries an
*affinity key* (the ``x-session-id`` header, else the ``user`` field, else the
leading part of the prompt: its first characters, or its leading token ids for a
prompt of tokens, see :func:`gateway.pipeline.parsing.affinity_key`); a
consistent-hash ring maps keys to engines, so adding or removing one engine moves
only about 1/N of the keys. A load-imbalance guard overrides the ring when the
chosen engine has ``max_imbalance`` more requests in flight than the least-loaded
one: affinity never piles work onto a busy engine.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.config.sections import RoutingSettings


@dataclass(slots=True)  # made per request: not frozen (its __init__ is 4x slower)
class EndpointView:
    """What a policy may know about one engine at the moment of choosing."""

    url: str
    in_flight: int
    healthy: bool
    waiting: float = 0.0
    """Requests queued inside the engine (``vllm:num_requests_waiting``), from any gateway."""
    kv_cache_usage: float = 0.0
    """The engine's KV-cache use, 0 to 1 (``vllm:kv_cache_usage_perc``): breaks load ties."""

    @property
    def load(self) -> float:
        """This gateway's requests in flight plus the engine's own queue."""
        return self.in_flight + self.waiting


class RoutingPolicy(Protocol):
    wants_affinity_key: bool
    """True when :meth:`choose` uses ``key``; the service computes it only then."""

    def choose(self, candidates: Sequence[EndpointView], key: bytes | None = None) -> EndpointView:
        """Pick one of ``candidates`` (never empty); ``key`` identifies the conversation."""
        ...


class RoundRobin:
    """Each engine in turn, regardless of load."""

    wants_affinity_key = False

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[EndpointView], key: bytes | None = None) -> EndpointView:
        return candidates[next(self._turn) % len(candidates)]


KV_TIE_MARGIN = 0.05
"""KV-cache use within this of the emptiest counts as equal (scrapes are seconds old)."""


class LeastOutstanding:
    """The engine with the fewest requests in flight; ties rotate so idle engines share work."""

    wants_affinity_key = False

    def __init__(self) -> None:
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[EndpointView], key: bytes | None = None) -> EndpointView:
        if len(candidates) == 1:
            return candidates[0]
        least = min(view.load for view in candidates)
        tied = [view for view in candidates if view.load == least]
        if len(tied) > 1:  # equally loaded: prefer room in the KV cache, then take turns
            roomiest = min(view.kv_cache_usage for view in tied)
            tied = [v for v in tied if v.kv_cache_usage <= roomiest + KV_TIE_MARGIN]
        return tied[next(self._turn) % len(tied)]


VIRTUAL_NODES = 64


def stable_hash(data: bytes) -> int:
    """A 64-bit hash that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring over engine URLs, ``VIRTUAL_NODES`` points per engine."""

    def __init__(self, urls: Sequence[str]) -> None:
        points = sorted(
            (stable_hash(f"{url}#{i}".encode()), url) for url in urls for i in range(VIRTUAL_NODES)
        )
        self._hashes = [h for h, _ in points]
        self._urls = [u for _, u in points]

    def owner(self, key: bytes) -> str:
        """The engine that owns ``key``: the first point clockwise of its hash."""
        index = bisect.bisect(self._hashes, stable_hash(key)) % len(self._hashes)
        return self._urls[index]


class PrefixAffinity:
    """Consistent hashing on the affinity key, guarded against load imbalance."""

    wants_affinity_key = True

    def __init__(self, max_imbalance: int) -> None:
        self._max_imbalance = max_imbalance
        self._fallback = LeastOutstanding()
        self._ring_urls: tuple[str, ...] = ()
        self._ring: HashRing | None = None

    def choose(self, candidates: Sequence[EndpointView], key: bytes | None = None) -> EndpointView:
        if key is None or len(candidates) == 1:
            return self._fallback.choose(candidates)
        chosen_url = self._ring_for(candidates).owner(key)
        chosen = next(view for view in candidates if view.url == chosen_url)
        least = min(view.load for view in candidates)
        if chosen.load - least > self._max_imbalance:
            return self._fallback.choose(candidates)
        return chosen

    def _ring_for(self, candidates: Sequence[EndpointView]) -> HashRing:
        """The ring over exactly these candidates, rebuilt only when they change."""
        urls = tuple(sorted(view.url for view in candidates))
        if self._ring is None or urls != self._ring_urls:
            self._ring_urls = urls
            self._ring = HashRing(urls)
        return self._ring


def build_policy(settings: RoutingSettings) -> RoutingPolicy:
    """The policy a ``routing:`` section names."""
    if settings.policy == "round_robin":
        return RoundRobin()
    if settings.policy == "prefix_affinity":
        return PrefixAffinity(settings.max_imbalance)
    return LeastOutstanding()


class RoutingTable:
    """Each model's policy (its own ``routing:`` section, else the top-level one)."""

    def __init__(self, default: RoutingSettings, per_model: Mapping[str, RoutingSettings]) -> None:
        self._default = (build_policy(default), default.prefix_chars)
        self._per_model = {m: (build_policy(s), s.prefix_chars) for m, s in per_model.items()}

    def for_model(self, model: str) -> tuple[RoutingPolicy, int]:
        """The policy and the affinity prefix length for ``model``."""
        return self._per_model.get(model, self._default)
