"""The lock-free tallies write exactly what prometheus_client's metrics write for the
same figures (but for the ``*_created`` samples), and keep their children apart."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from gateway.observability.tallies import LabelledCounter, LabelledGauge, LabelledHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _text(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def test_the_exposition_is_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counters = (
        Counter("x_requests_total", "Requests.", ("model", "status"), registry=theirs),
        LabelledCounter("x_requests_total", "Requests.", ("model", "status"), ours),
    )
    gauges = (
        Gauge("x_in_flight", "In flight.", ("model",), registry=theirs),
        LabelledGauge("x_in_flight", "In flight.", ("model",), ours),
    )
    histograms = (
        Histogram("x_seconds", "Time.", ("model",), buckets=BUCKETS, registry=theirs),
        LabelledHistogram("x_seconds", "Time.", ("model",), ours, buckets=BUCKETS),
    )
    for counter in counters:
        counter.labels("m", 200).inc()
        counter.labels("m", "200").inc(2)
        counter.labels("n", 500).inc()
    for gauge in gauges:
        gauge.labels("m").inc()
        gauge.labels("m").inc()
        gauge.labels("m").dec()
        gauge.labels("n").inc()
        gauge.labels("n").dec()  # back to 0: still written
    for histogram in histograms:
        for value in (0.0005, 0.001, 0.05, 1.0, 2.0, 100.0):  # bounds included, and +Inf
            histogram.labels("m").observe(value)
    assert _text(ours) == _text(theirs)
    assert ours.get_sample_value("x_requests_total", {"model": "m", "status": "200"}) == 3
    assert ours.get_sample_value("x_seconds_bucket", {"model": "m", "le": "0.001"}) == 2
    assert ours.get_sample_value("x_seconds_count", {"model": "m"}) == 6


def test_labels_must_match_the_names() -> None:
    counter = LabelledCounter("y_total", "Y.", ("a", "b"), CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    assert counter.labels("1", "2") is counter.labels(1, 2)  # one child per label text


def test_forget_drops_the_children_of_label_values_not_kept() -> None:
    registry = CollectorRegistry()
    counter = LabelledCounter("x_charged_total", "Charged.", ("key", "kind"), registry)
    counter.labels("gone", "tokens").inc(3)
    counter.labels("gone", 429).inc()  # by its text, and by the value it was given
    counter.labels("kept", "tokens").inc(5)
    counter.forget("key", {"kept"})
    assert counter.totals() == {("kept", "tokens"): 5.0}
    assert "gone" not in generate_latest(registry).decode()
    counter.labels("gone", 429).inc()  # made again: a fresh series, from zero
    assert counter.totals()[("gone", "429")] == 1.0
