"""Several workers without Redis each keep their own stored responses: the settings
say so (start-up warns), for exactly that case."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.settings import Settings


@pytest.mark.parametrize(
    ("config", "per_worker"),
    [
        ({"server": {"workers": 2}}, True),
        ({"server": {"workers": 1}}, False),
        ({"server": {"workers": 2}, "redis": {"url": "redis://127.0.0.1:6379/0"}}, False),
        ({"server": {"workers": 2}, "responses": {"memory_max_bytes": 0}}, False),
    ],
)
def test_responses_are_per_worker_only_with_workers_and_no_redis(
    config: dict[str, Any], per_worker: bool
) -> None:
    assert Settings(**config).responses_per_worker is per_worker
