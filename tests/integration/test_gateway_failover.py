"""An engine that dies between health probes costs the client nothing: the gateway retries."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.integration.conftest import STUB_MODEL, start_gateway, start_stub


def test_requests_fail_over_to_a_live_engine(tmp_path: Path) -> None:
    survivor = start_stub("--model", STUB_MODEL)
    doomed = start_stub("--model", STUB_MODEL)
    live = next(survivor)
    dying = next(doomed)
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [dying.url, live.url]}],
        "upstream": {"health_interval_s": 3600, "retries": 1},
    }
    gateways = start_gateway(config, tmp_path)
    gateway = next(gateways)
    try:
        doomed.close()  # the engine goes away; the gateway has not probed since
        client = gateway.client()
        before = live.stats()["requests"]
        for _ in range(6):
            reply = client.chat.completions.create(
                model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
        assert live.stats()["requests"] - before == 6
        assert 'vgate_upstream_errors_total{kind="connect",model="stub-model"}' in gateway.metrics()
        stream = client.chat.completions.create(
            model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert any(c.choices and c.choices[0].delta.content for c in stream)
    finally:
        gateways.close()
        survivor.close()


def test_retries_zero_gives_503_when_the_chosen_engine_is_gone(tmp_path: Path) -> None:
    doomed = start_stub("--model", STUB_MODEL)
    dying = next(doomed)
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [dying.url]}],
        "upstream": {"health_interval_s": 3600, "retries": 0},
    }
    gateways = start_gateway(config, tmp_path)
    gateway = next(gateways)
    try:
        doomed.close()
        with pytest.raises(openai.InternalServerError) as caught:
            gateway.client().chat.completions.create(
                model=STUB_MODEL, messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 503
    finally:
        gateways.close()
