"""A shared cache (``cache.scope: shared``) through the gateway, with a real redis-server
and a stub engine of its own: a tenant whose request is answered from another tenant's
entry cannot tell it from an answer the engine just made by the names in
``Server-Timing``, by the age of ``created``, or by the form of the ``id``."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway, start_stub

RUN = uuid.uuid4().hex[:8]
KEY_A, KEY_B = "sk-oracle-a-0123456789", "sk-oracle-b-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[Stub]:
    yield from start_stub("--model", STUB_MODEL)


@pytest.fixture(scope="module")
def shared(
    engine: Stub, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [engine.url]}],
        "redis": {"url": redis_url},
        "auth": {
            "enabled": True,
            "keys": [{"name": f"a-{RUN}", "key": KEY_A}, {"name": f"b-{RUN}", "key": KEY_B}],
        },
        "cache": {"enabled": True, "namespace": RUN, "scope": "shared"},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("shared-oracle"))


class Seen:
    """What one tenant sees of one answer."""

    def __init__(self, reply: httpx.Response, stream: bool) -> None:
        assert reply.status_code == 200, reply.text
        self.headers = reply.headers
        if stream:
            events = [line[6:] for line in reply.text.split("\n\n") if line.startswith("data: ")]
            chunks = [orjson.loads(e) for e in events if e != "[DONE]"]
        else:
            chunks = [reply.json()]
        self.ids = {c["id"] for c in chunks}
        self.created = {c["created"] for c in chunks}
        assert len(self.ids) == 1 and len(self.created) == 1  # one id, one time per answer
        self.text = "".join(
            choice.get("message", choice.get("delta", {})).get("content") or ""
            for c in chunks
            for choice in c["choices"]
        )

    @property
    def timing(self) -> list[str]:
        """The entry names of ``Server-Timing``, in order."""
        return [p.split(";")[0].strip() for p in self.headers["server-timing"].split(",")]

    @property
    def id_form(self) -> str:
        (answer_id,) = self.ids
        return re.sub(r"[0-9a-f]", "h", answer_id)


def ask(gateway: Gateway, key: str, text: str, stream: bool) -> Seen:
    body: dict[str, Any] = {"model": STUB_MODEL, "temperature": 0, "stream": stream,
                            "messages": [{"role": "user", "content": f"{RUN} {text}"}]}  # fmt: skip
    reply = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return Seen(reply, stream)


def calls(engine: Stub) -> int:
    return int(engine.stats()["requests"])


def until_the_clock_passes(second: int) -> None:
    """Wait (polling) until ``int(time.time())`` is past ``second``: an entry made in
    that second is then at least one second old, as ``created`` counts."""
    deadline = time.monotonic() + 5
    while int(time.time()) <= second:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("stream", [False, True])
def test_a_tenant_cannot_tell_a_shared_hit_from_a_miss(
    shared: Gateway, engine: Stub, stream: bool
) -> None:
    first = ask(shared, KEY_A, f"asked first {stream}", stream)  # tenant A asks ...
    until_the_clock_passes(max(first.created))
    before_calls, before = calls(engine), int(time.time())
    hit = ask(shared, KEY_B, f"asked first {stream}", stream)  # ... then tenant B
    after = int(time.time())
    assert calls(engine) == before_calls  # B's answer is A's entry ...
    assert hit.text == first.text and hit.ids != first.ids
    miss = ask(shared, KEY_B, f"asked by nobody {stream}", stream)
    assert calls(engine) == before_calls + 1  # ... and this one the engine's
    for seen in (hit, miss):
        assert "x-cache" not in seen.headers and "age" not in seen.headers
    framing = ("content-length", "transfer-encoding")
    assert [h in hit.headers for h in framing] == [h in miss.headers for h in framing]

    assert hit.timing == miss.timing  # no `queue` or `upstream` that a hit would lack
    (created,) = hit.created
    assert before <= created <= after  # not A's time: B's own, as a fresh answer's is
    assert hit.id_form == miss.id_form  # the stub's `chatcmpl-<24 hex>`, as long
