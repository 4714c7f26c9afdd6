"""A hostile tenant against another tenant's stored responses, through a real gateway
without Redis (responses kept in the gateway's memory, ``responses.memory_max_bytes``)
and a stub engine.

The memory store is one pool for every key, least recently used out first, and a
key's quota (``responses.max_bytes_per_key``, 256 MiB by default) is larger than the
pool (64 MiB): a key storing a pool's worth of responses pushed every other key's
out, which then answered 404 to their own ``retrieve`` and ``previous_response_not_found``
to their follow-ups. A key that fills the pool now pushes out its own oldest records
first: the key holding the most goes first."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from tests.integration.conftest import STUB_MODEL, Gateway, Stub, start_gateway

RUN = uuid.uuid4().hex[:8]
VICTIM, FLOODER = f"sk-evict-victim-{RUN}", f"sk-evict-flood-{RUN}"
POOL = 256 * 1024


@pytest.fixture(scope="module")
def gateway(stub: Stub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "models": [{"name": STUB_MODEL, "endpoints": [stub.url]}],
        "auth": {
            "enabled": True,
            "keys": [
                {"name": f"victim-{RUN}", "key": VICTIM},
                {"name": f"flood-{RUN}", "key": FLOODER},
            ],
        },
        "responses": {"memory_max_bytes": POOL},
    }
    yield from start_gateway(config, tmp_path_factory.mktemp("tenant-hunt3-eviction"))


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)


def test_a_key_filling_the_store_pushes_out_its_own_records_not_others(
    gateway: Gateway,
) -> None:
    victim = client(gateway, VICTIM)
    kept = victim.responses.create(model=STUB_MODEL, input="remember me", max_output_tokens=4)
    flooder = client(gateway, FLOODER)
    text = "filler " * 4_000  # ~28 KB a record: 20 of them are twice the pool
    ids = [
        flooder.responses.create(model=STUB_MODEL, input=text, max_output_tokens=4).id
        for _ in range(20)
    ]
    assert victim.responses.retrieve(kept.id).id == kept.id
    follow_up = victim.responses.create(
        model=STUB_MODEL, input="and now?", previous_response_id=kept.id, max_output_tokens=4
    )
    assert follow_up.status == "completed"
    assert flooder.responses.retrieve(ids[-1]).id == ids[-1]  # its newest is kept
    with pytest.raises(openai.NotFoundError):
        flooder.responses.retrieve(ids[0])  # its oldest made room
