"""Read an engine's Prometheus text into numbers (a pure parser, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"


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

    @classmethod
    def from_text(cls, text: str) -> EngineStats:
        values = parse_prometheus(text)
        return cls(
            running=values.get(RUNNING, 0.0),
            waiting=values.get(WAITING, 0.0),
            kv_cache_usage=values.get(KV_CACHE_USAGE, 0.0),
        )
