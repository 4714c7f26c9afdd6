"""Counters, gauges and histograms for the figures every request records, without locks.

A ``prometheus_client`` metric child takes a lock and checks itself on every
``inc`` or ``observe``, and ``labels()`` validates and converts its arguments and
takes another lock: about thirty Python calls per proxied request for the
handful of figures each request records, some 10% of the gateway's Python calls
(cProfile, full mode). The gateway records them from one thread (its event loop),
so these keep them in plain lists and dicts instead, behind the same small API
(``labels(*values)`` returning a child with ``inc``, ``dec``, ``observe``) and
with the same exposition: each is a ``Collector`` whose ``collect`` builds
``prometheus_client``'s metric families from a copy of its figures when
``/metrics`` is scraped (copying a dict or a list is atomic under the GIL, so a
scrape from another thread reads a consistent snapshot of each child). What they
do not write is the ``*_created`` timestamp sample of a ``prometheus_client``
counter or histogram, which no query of ours reads.

Label values come from the gateway (configured model names, routes, statuses),
never from clients, so the children stay few (see :mod:`gateway.observability.metrics`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import ClassVar, Generic, TypeVar, cast

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString as _untyped_go_float

C = TypeVar("C")
_go_float = cast(Callable[[float], str], _untyped_go_float)
"""How ``prometheus_client`` writes a bucket's bound (``le``), so the text is the same."""


class Tally:
    """One child of a :class:`LabelledCounter` or :class:`LabelledGauge`: a number."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Buckets:
    """One child of a :class:`LabelledHistogram`: a count per bucket, and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # le: a bound includes itself
        self.sum += value


class _Labelled(Collector, Generic[C]):
    """What the three kinds share: a name, its help, label names and the children
    (by the values given, and by their text: ``labels(200)`` is ``labels("200")``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[object, ...], C] = {}
        self._by_text: dict[tuple[str, ...], C] = {}
        registry.register(self)

    def labels(self, *values: object) -> C:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
            text = tuple(str(value) for value in values)
            child = self._by_text.get(text)
            if child is None:
                child = self._by_text[text] = self._new_child()
            self._children[values] = child
        return child

    def forget(self, label: str, keep: Collection[str]) -> None:
        """Drop every child whose ``label`` is not one of ``keep``: its series leaves the
        exposition (a revoked key's, say), and a later ``labels()`` starts it from zero."""
        index = self._labelnames.index(label)
        gone = [text for text in self._by_text if text[index] not in keep]
        if not gone:
            return
        for text in gone:
            del self._by_text[text]
        self._children = {
            values: child for values, child in self._children.items() if str(values[index]) in keep
        }

    def _new_child(self) -> C:
        raise NotImplementedError

    def _snapshot(self) -> list[tuple[tuple[str, ...], C]]:
        return list(self._by_text.items())


class _LabelledNumber(_Labelled[Tally]):
    """A counter or a gauge: one number per child, written as its ``family``."""

    _family: ClassVar[type[CounterMetricFamily] | type[GaugeMetricFamily]]

    def _new_child(self) -> Tally:
        return Tally()

    def totals(self) -> dict[tuple[str, ...], float]:
        """A copy of every child's figure, by its label values."""
        return {text: child.value for text, child in self._snapshot()}

    def collect(self) -> Iterator[Metric]:
        family = self._family(self._name, self._documentation, labels=self._labelnames)
        for text, child in self._snapshot():
            family.add_metric(list(text), child.value)
        yield family


class LabelledCounter(_LabelledNumber):
    """A counter by labels (``name`` may end in ``_total``, as for ``Counter``)."""

    _family = CounterMetricFamily


class LabelledGauge(_LabelledNumber):
    """A gauge by labels."""

    _family = GaugeMetricFamily


class LabelledHistogram(_Labelled[Buckets]):
    """A histogram by labels, with fixed bucket bounds."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        self._bounds = tuple(sorted(float(bound) for bound in buckets))
        self._les = [_go_float(bound) for bound in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> Buckets:
        return Buckets(self._bounds)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        for text, child in self._snapshot():
            counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for le, count in zip(self._les, counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(text), buckets, total)
        yield family
