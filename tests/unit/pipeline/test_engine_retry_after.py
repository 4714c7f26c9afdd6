"""An engine's ``Retry-After`` on a 429 or 503 reaches the client, through failover
too (the last engine tried is the one answered); before, it was dropped."""

from __future__ import annotations

import pytest

from gateway.errors import UpstreamStatusError
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import ENGINES, chat_body, world

BUSY = b'{"error": {"message": "busy", "code": 503}}'


@pytest.mark.parametrize("stream", [False, True])
async def test_the_last_busy_engines_retry_after_is_relayed(stream: bool) -> None:
    waits = {ENGINES[0]: "9", ENGINES[1]: "4"}
    tried: list[str] = []

    def busy(request: FakeRequest) -> Scripted:
        engine = next(url for url in ENGINES if request.url.startswith(url))
        tried.append(engine)
        return Scripted(status=503, body=BUSY, retry_after=waits[engine])

    w = world(busy)
    with pytest.raises(UpstreamStatusError) as caught:
        await w.ask(chat_body(stream=stream))
    assert len(tried) == 2  # failed over, then answered with the second's 503
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == waits[tried[-1]]
    w.assert_nothing_held()


@pytest.mark.parametrize(
    ("status", "sent", "relayed"),
    [
        (429, "12", "12"),
        (429, "3600", "3600"),
        (429, "3601", None),
        (429, "Wed, 21 Oct 2026 07:28:00 GMT", None),
        (429, "1\r\nx-evil: 1", None),
        (429, "-1", None),
        (400, "5", None),  # Retry-After means nothing on a 400: not relayed
    ],
)
async def test_only_a_valid_retry_after_of_a_429_or_503_is_relayed(
    status: int, sent: str, relayed: str | None
) -> None:
    w = world(lambda _: Scripted(status=status, body=BUSY, retry_after=sent))
    with pytest.raises(UpstreamStatusError) as caught:
        await w.ask(chat_body())
    assert caught.value.status == status
    assert caught.value.headers.get("Retry-After") == relayed
    assert not any("evil" in f"{k}{v}" for k, v in caught.value.headers.items())
