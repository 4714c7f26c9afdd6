"""Token limits reconciled against a real vLLM engine's usage: a gateway with a
tokens-per-minute key in front of the e2e stack's engine, the OpenAI SDK as client."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from gateway.ratelimit.limits import estimate_tokens
from tests.e2e.conftest import DEFAULT_MODEL, Stack, serve_in_front

pytestmark = pytest.mark.e2e
KEY = "sk-e2e-tpm-0123456789"
TPM = 5000
PARIS = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def limited_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve_in_front(
        stack,
        tmp_path_factory.mktemp("e2e-ratelimit"),
        auth={"enabled": True, "keys": [{"name": "e2e-tpm", "key": KEY, "tpm": TPM}]},
    )


def test_streams_are_charged_the_engines_real_usage(limited_url: str) -> None:
    client = openai.OpenAI(base_url=limited_url, api_key=KEY, max_retries=0)
    ask = {"model": DEFAULT_MODEL, "messages": PARIS, "temperature": 0, "max_tokens": 200}
    # What this request really costs, as vLLM counts it (its chat template included).
    reference = client.chat.completions.create(**ask)  # type: ignore[call-overload]
    assert reference.usage is not None
    cost = reference.usage.total_tokens
    assert cost < estimate_tokens(ask, 512)  # so charging the reservation would show

    chunks = list(client.chat.completions.create(**ask, stream=True))  # type: ignore[call-overload]
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None and c.choices for c in chunks)  # the usage event was removed

    probe = {"model": DEFAULT_MODEL, "messages": PARIS, "max_tokens": 1}
    raw = client.chat.completions.with_raw_response.create(**probe)  # type: ignore[call-overload]
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    # Both answers were charged their real usage; the probe its own reservation so far.
    assert remaining == TPM - 2 * cost - estimate_tokens(probe, 512)
