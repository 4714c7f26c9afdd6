"""What the SDK conformance tests (``test_sdk_conformance_s13*.py``) share: a gateway
with keys in Redis-backed limits in front of the session's stub engine, official SDK
clients for its keys, and the in-flight gauge a test waits on. Each module starts its
own gateway (module-scoped), so a key's counters are its module's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers.metrics_text import metric_sum
from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]
OPEN_KEY = "sk-s13-open-0123456789"
RPM_KEY = "sk-s13-rpm-0123456789"
ONE_AT_A_TIME_KEY = "sk-s13-conc-0123456789"


def keyed_gateway(stub: Stub, redis_url: str, directory: Path) -> Iterator[Gateway]:
    """A gateway with keys in Redis-backed limits: one open key, one at 1 request/min,
    one with a single concurrent request (named afresh: counters of their own)."""
    run = uuid.uuid4().hex[:8]
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"open-{run}", "key": OPEN_KEY},
                {"name": f"rpm-{run}", "key": RPM_KEY, "rpm": 1},
                {"name": f"conc-{run}", "key": ONE_AT_A_TIME_KEY, "max_concurrent": 1},
            ],
        },
        "upstream": {"read_timeout_s": 5, "retries": 0, "breaker_failures": 1000},
    }
    yield from start_gateway(config, directory)


def sdk(gateway: Gateway, key: str = OPEN_KEY, **kwargs: Any) -> openai.OpenAI:
    """The official client for ``key``, no retries unless ``kwargs`` say so."""
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, **{"max_retries": 0, **kwargs})


def in_flight(gateway: Gateway) -> float:
    """The gateway's ``vgate_requests_in_flight`` of the stub's model."""
    return metric_sum(gateway.metrics(), "vgate_requests_in_flight", model=STUB_MODEL)
