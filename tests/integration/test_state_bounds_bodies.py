"""Small bodies that decode into a lot count against ``server.max_body_bytes_in_flight``.

A 60 KB body of ``[{},{},...]`` takes 1.6 MB once decoded, held while its request
waits on the engine. Bodies under 64 KiB were never metered: however many of them
were in flight, none was refused, and 300 at once grew a worker by ~500 MiB.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

BUDGET = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "server": {"max_body_bytes": BUDGET, "max_body_bytes_in_flight": BUDGET},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("bodies"))


def _dense_body() -> bytes:
    head = orjson.dumps(
        {
            "model": STUB_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
            "stub": {"ttft_ms": 3000},  # in flight long enough to be held together
        }
    )
    return head[:-1] + b',"metadata_x":[' + b"{}," * 20_000 + b"{}]}"


def test_dense_small_bodies_in_flight_are_refused_past_the_budget(gateway: Gateway) -> None:
    body = _dense_body()
    assert len(body) < 64 * 1024

    def send(_: int) -> httpx.Response:
        return httpx.post(
            f"{gateway.base_url}/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=30,
        )

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    refused = [a for a in answers if a.status_code == 503]
    assert refused, [a.status_code for a in answers]
    assert all(a.json()["error"]["code"] == "request_bytes_in_flight" for a in refused)
    assert all(a.headers["retry-after"] == "1" for a in refused)
    assert any(a.status_code == 200 for a in answers)
