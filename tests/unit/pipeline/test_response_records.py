"""ResponseRecords: the stored-bytes quota refuses a key at it, and a quota that cannot
be read (Redis down) refuses no one: the store's put checks it again (review: every
``store: true`` request got a 503 while Redis was unreachable)."""

from __future__ import annotations

import pytest

from gateway.backends.memory.responses import MemoryResponseStore
from gateway.config.responses import ResponsesSettings
from gateway.errors import QuotaExceededError, StoreUnavailable
from gateway.observability.metrics import GatewayMetrics
from gateway.pipeline.response_records import ResponseRecords
from tests.helpers.metrics_text import metric_sum


class Unreachable(MemoryResponseStore):
    async def usage(self, owner: str) -> int:
        raise StoreUnavailable("redis did not answer")


async def test_a_key_at_its_quota_is_refused() -> None:
    store = MemoryResponseStore(1 << 20)
    records = ResponseRecords(store, ResponsesSettings(max_bytes_per_key=2048), GatewayMetrics())
    await records.check_quota("alice")
    assert await store.put("r1", b"x" * 2048, 60, "alice", None)
    with pytest.raises(QuotaExceededError):
        await records.check_quota("alice")
    await records.check_quota("bob")


async def test_a_quota_that_cannot_be_read_refuses_no_one() -> None:
    metrics = GatewayMetrics()
    records = ResponseRecords(
        Unreachable(1 << 20), ResponsesSettings(max_bytes_per_key=2048), metrics
    )
    await records.check_quota("alice")  # no 503: the request goes on
    text = metrics.render().decode()
    assert metric_sum(text, "vgate_redis_errors_total", component="responses") == 1
