"""A client cut for falling behind a shared stream (:class:`SlowReaderError`, a single
flight's follower) is not an engine failure: the engine answered in full, at its own
pace. Before, the follower's request was counted in
``vgate_upstream_errors_total{kind="stream_interrupted"}`` (and as a failed stream on
the status page), so one slow client paged whoever alerts on engine errors."""

from __future__ import annotations

from gateway.errors import SlowReaderError, UpstreamError
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.exchange import Exchange
from gateway.pool.engine_pool import EnginePool
from gateway.upstream.relay import StreamOutcome

MODEL = "m"


def closed_with(error: Exception) -> GatewayMetrics:
    """The metrics after a stream request that ended with ``error`` closes."""
    metrics = GatewayMetrics()
    exchange = Exchange("/v1/chat/completions", EnginePool({MODEL: ("http://a",)}), metrics)
    exchange.model = MODEL
    outcome = exchange.outcome = StreamOutcome()
    outcome.first_chunk_at = exchange.started
    assert isinstance(error, UpstreamError | SlowReaderError)
    outcome.error = error
    exchange.close()
    return metrics


def interrupted(metrics: GatewayMetrics) -> float:
    labels = {"model": MODEL, "kind": "stream_interrupted"}
    return metrics.registry.get_sample_value("vgate_upstream_errors_total", labels) or 0.0


def test_a_client_cut_for_slowness_is_no_upstream_error() -> None:
    assert interrupted(closed_with(SlowReaderError("too slow"))) == 0.0
    assert interrupted(closed_with(UpstreamError("engine broke"))) == 1.0  # still counted
