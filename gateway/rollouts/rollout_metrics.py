"""The controller's Prometheus metrics, on the app's registry.

``vgate_rollout_weight{rollout,variant}`` is this replica's copy of the weights
(read at scrape time: a change made elsewhere shows once applied here);
``vgate_rollout_rollbacks_total{rollout,variant,reason}`` counts the rollbacks this
replica made (``reason``: ``error_rate``, ``ttft_p95``, ``itl_p95`` or ``operator``),
so the sum over replicas is the number made. Labels are configured names only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

WeightRows = Callable[[], Iterable[tuple[str, str, float]]]
"""``(rollout, variant, weight)`` for every variant, now."""


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry, weights: WeightRows) -> None:
        self.rollbacks = Counter(
            "vgate_rollout_rollbacks_total",
            "Canaries set to weight 0 by this replica, by rollout, variant and reason.",
            ("rollout", "variant", "reason"),
            registry=registry,
        )
        registry.register(_WeightCollector(weights))


class _WeightCollector(Collector):
    def __init__(self, rows: WeightRows) -> None:
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "vgate_rollout_weight",
            "Each rollout variant's weight as this replica applies it.",
            labels=("rollout", "variant"),
        )
        for rollout, variant, weight in self._rows():
            family.add_metric((rollout, variant), weight)
        yield family
