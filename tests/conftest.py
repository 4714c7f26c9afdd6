"""Session-wide real services shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.redis_server import run_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server for this test session."""
    with run_redis() as url:
        yield url
