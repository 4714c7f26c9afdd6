"""Every answer that says when to try again says it in ``retry-after-ms`` too, which the
official SDKs read before ``Retry-After`` (whole seconds, rounded up): the gateway's own
refusals (rate limits, overload, a store or limiter it cannot reach) with the wait
itself, and an engine's 429 or 503 with the engine's ``retry-after-ms`` when it is a
whole number of milliseconds up to an hour (before, only ``Retry-After`` was relayed,
and the gateway's 503s said whole seconds only)."""

from __future__ import annotations

import httpx2
import openai
import pytest

from gateway.config.sections import RateLimitSettings
from gateway.errors import (
    DependencyUnavailableError,
    OverloadedError,
    RateLimitError,
    UpstreamStatusError,
    retry_after,
)
from gateway.errors.engine_text import relayed_retry_after
from gateway.http.body_budget import BodyBudget
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.limits import Limits, LimitScope
from tests.unit.http.test_body_budget import chunks, receiver
from tests.unit.ratelimit.test_admission import CHAT, Clock, DownLimiter


def sdk_wait(headers: dict[str, str]) -> float | None:
    """How long the official SDK waits before retrying an answer with ``headers``."""
    client = openai.OpenAI(api_key="none", base_url="http://127.0.0.1:9")
    return client._parse_retry_after_header(httpx2.Headers(headers))


def test_a_wait_is_said_in_whole_seconds_and_in_milliseconds() -> None:
    assert retry_after(1.2) == {"Retry-After": "2", "retry-after-ms": "1200"}
    assert retry_after(7) == {"Retry-After": "7", "retry-after-ms": "7000"}
    assert retry_after(0) == {"Retry-After": "0", "retry-after-ms": "0"}
    assert retry_after(-3) == {"Retry-After": "0", "retry-after-ms": "0"}
    assert sdk_wait(retry_after(1.2)) == 1.2  # not the 2 s of Retry-After


@pytest.mark.parametrize(
    ("value_ms", "relayed_ms"),
    [
        (b"1500", "1500"),
        (" 0 ", "0"),
        ("3600000", "3600000"),
        ("3600001", None),
        ("1.5", None),
        ("-1", None),
        ("", None),
        ("\u0661", None),
        ("5\r\nx-evil: 1", None),
    ],
)
def test_an_engines_retry_after_ms_is_relayed_as_whole_milliseconds_only(
    value_ms: bytes | str, relayed_ms: str | None
) -> None:
    expected = {"Retry-After": "2"} | ({} if relayed_ms is None else {"retry-after-ms": relayed_ms})
    assert relayed_retry_after("2", value_ms) == expected
    error = UpstreamStatusError(429, b"{}", "application/json", None, value_ms)
    assert error.headers.get("retry-after-ms") == relayed_ms
    assert "Retry-After" not in error.headers
    refused = UpstreamStatusError(400, b"{}", "application/json", "2", value_ms)
    assert not refused.headers  # no retry hint means anything on a 400


def test_the_rate_limits_429_says_its_wait_in_milliseconds() -> None:
    error = RateLimitError("slow down", "requests", retry_after(0.4))
    assert error.headers["retry-after-ms"] == "400"
    assert sdk_wait(error.headers) == 0.4


async def test_an_unreachable_limiter_under_fail_closed_says_one_second() -> None:
    settings = RateLimitSettings(on_redis_error="fail_closed")
    admission = Admission(DownLimiter(Clock()), settings, GatewayMetrics())
    scopes = (LimitScope("{r}", Limits(rpm=10), "r"),)
    with pytest.raises(DependencyUnavailableError) as caught:
        await admission.admit(scopes, CHAT)
    assert caught.value.headers["retry-after-ms"] == "1000"
    assert caught.value.headers["Retry-After"] == "1"


async def test_a_full_body_budget_says_one_second() -> None:
    budget = BodyBudget(100)
    first = budget.meter(receiver(chunks(80)), None)
    await first()
    second = budget.meter(receiver(chunks(80)), None)
    with pytest.raises(OverloadedError) as caught:
        await second()
    assert caught.value.headers["retry-after-ms"] == "1000"
    first.release()
    second.release()
