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


def _has_nvidia_gpu() -> bool:
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return False
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped only when this machine has no NVIDIA GPU."""
    if _has_nvidia_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
