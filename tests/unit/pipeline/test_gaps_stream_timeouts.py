"""Bug hunt: a stream whose engine went quiet past its idle deadline was counted in
``vgate_upstream_errors_total`` as ``stream_interrupted`` (a broken stream), not
``timeout``; and a stream's time-to-first-token 504 did not name the setting it
exceeded (``ttft_s = 30 s``: no such setting exists). Each 504 now says the value and
the setting it comes from: ``upstream.ttft_timeout_s``, ``upstream.read_timeout_s``,
or the model's own ``timeouts.ttft_s``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import UpstreamError, UpstreamTimeoutError
from gateway.pipeline.results import EventStream
from gateway.upstream.fake import Scripted
from tests.unit.pipeline.world import MODEL, STREAM_EVENTS, World, chat_body, drain, world


def errors(w: World, kind: str) -> float:
    labels = {"model": MODEL, "kind": kind}
    return w.metrics.registry.get_sample_value("vgate_upstream_errors_total", labels) or 0.0


async def stream_of(w: World) -> EventStream:
    result = await w.ask(chat_body(stream=True), cache_control="no-cache")
    assert isinstance(result, EventStream)
    return result


# -- the metric kind of a deadline that passes mid-stream ---------------------------------


async def test_an_idle_deadline_mid_stream_counts_as_a_timeout() -> None:
    quiet = asyncio.Event()  # never set: the engine goes quiet after its first batch
    w = world(
        lambda _: Scripted(events=STREAM_EVENTS, gate=quiet, gate_each_batch=True),
        upstream={"retries": 1, "read_timeout_s": 0.05},
    )
    stream = await stream_of(w)
    with pytest.raises(UpstreamTimeoutError, match="idle"):
        await drain(stream)
    assert errors(w, "timeout") == 1.0
    assert errors(w, "stream_interrupted") == 0.0
    w.assert_nothing_held()


async def test_a_total_deadline_mid_stream_counts_as_a_timeout() -> None:
    quiet = asyncio.Event()
    w = world(
        lambda _: Scripted(events=STREAM_EVENTS, gate=quiet, gate_each_batch=True),
        upstream={"retries": 1, "total_timeout_s": 0.05},
    )
    stream = await stream_of(w)
    with pytest.raises(UpstreamTimeoutError, match="total"):
        await drain(stream)
    assert (errors(w, "timeout"), errors(w, "stream_interrupted")) == (1.0, 0.0)
    w.assert_nothing_held()


async def test_a_broken_stream_still_counts_as_interrupted() -> None:
    w = world(lambda _: Scripted(events=STREAM_EVENTS, break_after=1))
    stream = await stream_of(w)
    with pytest.raises(UpstreamError) as caught:
        await drain(stream)
    assert not isinstance(caught.value, UpstreamTimeoutError)
    assert (errors(w, "timeout"), errors(w, "stream_interrupted")) == (0.0, 1.0)
    w.assert_nothing_held()


# -- what a first-token 504 says ----------------------------------------------------------


def silent(**overrides: Any) -> World:
    never = asyncio.Event()  # the engine never starts answering
    return world(lambda _: Scripted(events=STREAM_EVENTS, gate=never), **overrides)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (
            {"upstream": {"retries": 1, "ttft_timeout_s": 0.05}},
            "the engine did not start answering within 0.05 s (upstream.ttft_timeout_s)",
        ),
        (  # no ttft_timeout_s: the first event waits read_timeout_s
            {"upstream": {"retries": 1, "read_timeout_s": 0.05}},
            "the engine did not start answering within 0.05 s (upstream.read_timeout_s)",
        ),
        (
            {
                "upstream": {"retries": 1, "ttft_timeout_s": 30},
                "models": [
                    {
                        "name": MODEL,
                        "endpoints": ["http://engine-a", "http://engine-b"],
                        "timeouts": {"ttft_s": 0.05},
                    }
                ],
            },
            "the engine did not start answering within 0.05 s"
            f" (timeouts.ttft_s of model `{MODEL}`)",
        ),
        (
            {"upstream": {"retries": 1, "total_timeout_s": 0.05}},
            "the engine did not finish within 0.05 s (upstream.total_timeout_s)",
        ),
    ],
    ids=["upstream-ttft", "upstream-read", "model-ttft", "upstream-total"],
)
async def test_a_first_token_timeout_names_the_setting_and_its_value(
    overrides: dict[str, Any], named: str
) -> None:
    w = silent(**overrides)
    with pytest.raises(UpstreamTimeoutError) as caught:
        await w.ask(chat_body(stream=True))
    assert caught.value.message == named
    assert caught.value.status == 504 and caught.value.code == "upstream_timeout"
    assert errors(w, "timeout") == 1.0
    w.assert_nothing_held()
