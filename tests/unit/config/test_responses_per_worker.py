"""Several workers without Redis would each keep their own stored responses: a
response made through one worker is then not found (404) through another, to
``retrieve`` and ``previous_response_id`` alike (SDK hunt: 23 of 40 retrieves). Such a
config is refused, as rate limits without Redis are, naming both ways out."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config.settings import Settings


def test_several_workers_without_redis_must_store_no_responses() -> None:
    with pytest.raises(ValidationError, match=r"need redis\.url.*memory_max_bytes: 0"):
        Settings(server={"workers": 2})


@pytest.mark.parametrize(
    "config",
    [
        {"server": {"workers": 1}},
        {"server": {"workers": 2}, "redis": {"url": "redis://127.0.0.1:6379/0"}},
        {"server": {"workers": 2}, "responses": {"memory_max_bytes": 0}},
    ],
)
def test_one_worker_redis_or_no_stored_responses_start(config: dict[str, Any]) -> None:
    assert Settings(**config).server.workers == config["server"]["workers"]
