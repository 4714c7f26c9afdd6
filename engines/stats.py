"""Read an engine's Prometheus text into numbers (a pure parser, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "vllm:generation_tokens")


def parse_prometheus(text: str) -> dict[str, float]:
    """Sum every sample of each metric across its labels; comments and junk lines are skipped."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_end = line.find("{")
        if name_end < 0:
            name, _, rest = line.partition(" ")
        else:
            name = line[:name_end]
            rest = line[line.rfind("}") + 1 :]
        fields = rest.split()
        if not name or not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        totals[name] = totals.get(name, 0.0) + value
    return totals


@dataclass(frozen=True, slots=True)
class EngineStats:
    running: float
    waiting: float
    kv_cache_usage: float
    prefix_cache_queries: float = 0.0
    """Tokens looked up in the prefix cache since the engine started (a counter)."""
    prefix_cache_hits: float = 0.0
    """Of those, tokens found (a counter)."""
    generation_tokens: float = 0.0
    """Tokens generated since the engine started (a counter: still, the engine is idle
    or stuck; rising, it works)."""

    @classmethod
    def from_text(cls, text: str) -> EngineStats:
        values = parse_prometheus(text)
        return cls(
            running=values.get(RUNNING, 0.0),
            waiting=values.get(WAITING, 0.0),
            kv_cache_usage=values.get(KV_CACHE_USAGE, 0.0),
            prefix_cache_queries=_first(values, PREFIX_QUERIES),
            prefix_cache_hits=_first(values, PREFIX_HITS),
            generation_tokens=_first(values, GENERATION_TOKENS),
        )


def _first(values: dict[str, float], names: tuple[str, ...]) -> float:
    return next((values[n] for n in names if n in values), 0.0)
