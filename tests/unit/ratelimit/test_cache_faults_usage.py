"""An engine's ``usage`` is believed only when it is a count a request can use: an
integer from 0 to :data:`MAX_USAGE`. A negative count (which would refund the key),
a fraction, a string, a bool or an absurd one (10**12) is unknown, and the request
keeps its reservation, wherever the count was read (a body, a stream's usage event,
a settlement)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.backends.memory.limiter import MemoryLimiter
from gateway.config.sections import RateLimitSettings
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.results import Answer
from gateway.pipeline.usage import UsageTap, body_usage, usage_tokens
from gateway.ratelimit.admission import Admission
from gateway.ratelimit.cost import MAX_USAGE
from gateway.ratelimit.limits import Limits, LimitScope
from gateway.upstream.fake import FakeRequest, Scripted, sse
from tests.unit.pipeline.world import chat_body, completion, world

BAD = [b"-5", b"-1", b"1.5", b"7.0", b"1e12", b'"7"', b"true", b"1000000000000",
       str(MAX_USAGE + 1).encode(), b"9" * 30, b"9" * 5000]  # fmt: skip
"""``total_tokens`` as an engine may write it, none of them a count to believe."""
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}


def answer_with(total: bytes) -> bytes:
    body = completion().replace(b'"total_tokens":5', b'"total_tokens":' + total)
    assert body != completion() or total == b"5"
    return body


@pytest.mark.parametrize("total", BAD, ids=lambda raw: raw[:16].decode())
def test_a_count_to_disbelieve_is_unknown(total: bytes) -> None:
    body = answer_with(total)
    assert body_usage(body) is None
    try:
        usage = orjson.loads(body)["usage"]
    except orjson.JSONDecodeError:
        usage = None
    assert usage_tokens(usage) is None
    tap = UsageTap(strip=False)
    usage_event = b'{"id":"c","choices":[],"usage":{"total_tokens":' + total + b"}}"
    tap.inspect(b"data: " + usage_event + b"\n\ndata: [DONE]\n\n")
    assert tap.tokens is None


def test_a_count_to_believe_is_read() -> None:
    assert body_usage(answer_with(b"0")) == 0
    assert body_usage(answer_with(str(MAX_USAGE).encode())) == MAX_USAGE
    assert body_usage(answer_with(b"123")) == 123
    assert body_usage(answer_with(b" 123 ")) == 123
    assert usage_tokens({"prompt_tokens": 3, "completion_tokens": 4}) == 7
    assert usage_tokens({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": None}) == 7
    assert usage_tokens({"prompt_tokens": -3, "completion_tokens": 4}) is None
    tap = UsageTap(strip=False)
    tap.inspect(sse({"id": "c", "choices": [], "usage": {"total_tokens": 9}}))
    assert tap.tokens == 9


def tpm_key(tpm: int) -> tuple[LimitScope, ...]:
    return (LimitScope("{tpm}", Limits(tpm=tpm), "tpm"),)


@pytest.mark.parametrize("actual", [-1000, -1, 1.5, 10**12, MAX_USAGE + 1], ids=repr)
async def test_a_settlement_with_a_count_to_disbelieve_keeps_the_reservation(actual: Any) -> None:
    metrics = GatewayMetrics()
    admission = Admission(MemoryLimiter(), RateLimitSettings(), metrics)
    ticket = await admission.admit(tpm_key(1000), CHAT)
    ticket.settle(actual)
    charged = metrics.registry.get_sample_value("vgate_tokens_charged_total", {"key": "tpm"})
    assert charged == ticket.reserved
    # The reservation still counts: no refund lets the key past its limit.
    later = await admission.admit(tpm_key(1000), CHAT | {"max_tokens": 1000})
    prompt = ticket.reserved - 10  # CHAT's max_tokens
    assert later.output_cap == 1000 - ticket.reserved - prompt


@pytest.mark.parametrize("total", [b"-1000", b"1000000000000"])
async def test_an_engine_s_bad_usage_keeps_the_reservation(total: bytes) -> None:
    def engine(request: FakeRequest) -> Scripted:
        return Scripted(body=answer_with(total))

    for cache in (True, False):  # a filled answer's usage is read from its parse
        w = world(engine, cache={"enabled": cache})
        result = await w.ask(chat_body())
        assert isinstance(result, Answer)
        charged = w.metrics.registry.get_sample_value("vgate_tokens_charged_total", {"key": "team"})
        assert charged is not None and 8 < charged < 100  # the reservation: prompt + 8
        w.assert_nothing_held()
