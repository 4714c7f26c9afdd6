"""What the gateway does with engine streams that are not framed as vLLM frames them,
or that break early (bug hunt, both upstream clients):

- events ending in CRLF (sse-starlette, llama.cpp's server) or lone CR are relayed,
  as LF events; before, no event was ever found (503, and the engine marked down);
- a ``data:`` line that never ends does not hold the gateway's memory: the wait is for
  a whole event (``read_timeout_s``), and an event may not grow past 32 MiB; before,
  the gateway buffered all of it (+600 MB in 40 s) and re-scanned it on every read;
- a stream that closes after its 200 head, before its first event (an engine that died
  in prefill), goes to another engine, as README says: nothing reached the client.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers.hostile_engine import HostileEngine, hostile_engine
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

READ_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def engine() -> Iterator[HostileEngine]:
    with hostile_engine() as running:
        yield running


@pytest.fixture(scope="module", params=["lean", "aiohttp"])
def gateway(
    request: pytest.FixtureRequest,
    engine: HostileEngine,
    stub: Stub,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    config: dict[str, Any] = {
        "models": [
            {"name": "hostile", "endpoints": [engine.url], "upstream_model": "m"},
            {
                "name": "fails-over",
                "endpoints": [engine.url, stub.url],
                "upstream_model": STUB_MODEL,
            },
        ],
        "upstream": {
            "client": request.param,
            "read_timeout_s": READ_TIMEOUT_S,
            "breaker_failures": 1000,
            "health_interval_s": 0.2,
        },
        "routing": {"policy": "round_robin"},
    }
    directory: Path = tmp_path_factory.mktemp(f"framing-{request.param}")
    yield from start_gateway(config, directory)


def chat(gateway: Gateway, model: str, mode: str) -> Any:
    return gateway.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"MODE:{mode}"}], stream=True
    )


@pytest.mark.parametrize("mode", ["crlf", "cr", "lf"])
def test_events_in_any_line_ending_are_relayed(gateway: Gateway, mode: str) -> None:
    chunks = list(chat(gateway, "hostile", mode))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello there"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_an_event_that_never_ends_times_out_without_holding_memory(gateway: Gateway) -> None:
    with pytest.raises(openai.APIError) as caught:
        list(chat(gateway, "hostile", "endless"))
    assert "1 s (upstream.read_timeout_s)" in str(caught.value)
    health = gateway.client().with_options(timeout=5).models.list()  # still answering
    assert {m.id for m in health.data} >= {"hostile"}


def test_a_stream_closed_after_its_head_goes_to_another_engine(
    gateway: Gateway, engine: HostileEngine
) -> None:
    before = engine.requests.count("close_after_head")
    for _ in range(4):  # round robin: some go to the hostile engine first
        chunks = list(chat(gateway, "fails-over", "close_after_head"))
        assert chunks and chunks[-1].choices[0].finish_reason is not None
    assert engine.requests.count("close_after_head") > before
