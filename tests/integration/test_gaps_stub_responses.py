"""Bug hunt: the stub engine's start-up fault flags were ignored on ``/v1/responses``.
Each flag, on a real stub process, driven by the official SDK as on chat completions
(``test_stub_engine.py``)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.conftest import STUB_MODEL
from tests.integration.test_stub_engine import running_stub, wait_for


def sdk(url: str, timeout: float = 10.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def test_fail_status_flag_fails_responses() -> None:
    with running_stub("--fail-status", "503") as stub:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(stub.url).responses.create(model=STUB_MODEL, input="hello")
        assert caught.value.status_code == 503 and caught.value.code == "stub_fault"


def test_drop_after_flag_cuts_response_streams() -> None:
    with running_stub("--drop-after", "2", "--tokens", "6") as stub:
        texts: list[str] = []
        with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
            for event in sdk(stub.url).responses.create(
                model=STUB_MODEL, input="hello", stream=True
            ):
                if event.type == "response.output_text.delta":
                    texts.append(event.delta)
        assert len(texts) == 2
        assert wait_for(lambda: stub.stats()["streams_dropped"] == 1)
        whole = sdk(stub.url).responses.create(model=STUB_MODEL, input="hello")
        assert whole.status == "completed"  # as on chat: only streams are cut


def test_hang_flag_leaves_responses_unanswered() -> None:
    with running_stub("--hang") as stub:
        with pytest.raises(openai.APITimeoutError):
            sdk(stub.url, timeout=0.3).responses.create(model=STUB_MODEL, input="hello")
        assert wait_for(lambda: stub.stats()["requests_cancelled"] == 1)
        assert stub.stats()["in_flight"] == 0
