"""Session-wide real services shared by every test layer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


def _cpu_has_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX): without it
    torch emulates bfloat16, and AWQ calibration of the default model takes about two
    hours on two cores instead of about five minutes (measured 2026-11-30 on an
    AVX2-only AMD EPYC: 240 s per layer, 31 layers)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped only when this machine has no NVIDIA GPU, and
    tests marked ``bf16_cpu`` only when its CPU has no native bfloat16."""
    hardware = {
        "gpu": (_has_nvidia_gpu, "needs an NVIDIA GPU; none on this machine"),
        "bf16_cpu": (
            _cpu_has_bf16,
            "needs a CPU with native bfloat16 (avx512_bf16 or amx_bf16); this one has neither",
        ),
    }
    for marker, (present, reason) in hardware.items():
        marked = [item for item in items if marker in item.keywords]
        if marked and not present():
            for item in marked:
                item.add_marker(pytest.mark.skip(reason=reason))
