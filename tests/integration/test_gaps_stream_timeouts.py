"""Bug hunt, through a real gateway and stub engine: a stream cut by its idle deadline
was counted as ``kind="stream_interrupted"`` in ``vgate_upstream_errors_total``, not
``timeout``; and a stream's first-token 504 did not name the setting it exceeded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers.metrics_text import metric_sum
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def timed(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    def model(name: str, **timeouts: float) -> dict[str, Any]:
        return {"name": name, "endpoints": [stub.url], "upstream_model": STUB_MODEL,
                "timeouts": timeouts}  # fmt: skip

    config = {
        "models": [model("gaps-read"), model("gaps-own-ttft", ttft_s=0.3)],
        "upstream": {"breaker_failures": 1000, "read_timeout_s": 0.5},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("gaps-timeouts"))


def stream(gateway: Gateway, model: str, stub: dict[str, float]) -> Any:
    return gateway.client().chat.completions.create(
        model=model, messages=MESSAGES, stream=True, extra_body={"stub": stub}
    )


def errors(gateway: Gateway, model: str, kind: str) -> float:
    return metric_sum(gateway.metrics(), "vgate_upstream_errors_total", model=model, kind=kind)


def test_an_idle_gap_mid_stream_counts_as_a_timeout(timed: Gateway) -> None:
    before = errors(timed, "gaps-read", "timeout"), errors(timed, "gaps-read", "stream_interrupted")
    received = 0
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream(timed, "gaps-read", {"itl_ms": 2000, "tokens": 3}):
            received += bool(chunk.choices and chunk.choices[0].delta.content)
    assert received == 1  # the stream had begun: the deadline passed mid-stream
    assert "for longer than 0.5 s (upstream.read_timeout_s)" in str(caught.value)
    after = errors(timed, "gaps-read", "timeout"), errors(timed, "gaps-read", "stream_interrupted")
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 0.0)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        ("gaps-read", "within 0.5 s (upstream.read_timeout_s)"),
        ("gaps-own-ttft", "within 0.3 s (timeouts.ttft_s of model `gaps-own-ttft`)"),
    ],
)
def test_a_first_token_504_names_the_setting(timed: Gateway, model: str, named: str) -> None:
    before = errors(timed, model, "timeout")
    with pytest.raises(openai.APIStatusError) as caught:
        list(stream(timed, model, {"ttft_ms": 3000}))
    assert caught.value.status_code == 504
    error = caught.value.response.json()["error"]
    assert error["code"] == "upstream_timeout"
    assert error["message"] == f"the engine did not start answering {named}"
    assert errors(timed, model, "timeout") == before + 1
