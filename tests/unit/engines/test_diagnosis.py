"""Why an engine cannot start: the checks before spawning, and the reading of its log."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from engines.diagnosis import (
    INSTALL_FIX,
    START_MARKER,
    check_interpreter,
    check_model_path,
    classify_exit,
    preflight,
)
from engines.spec import EngineSpec

LOG = Path("/logs/m-0.log")


async def test_an_interpreter_without_vllm_is_a_permanent_problem_naming_the_fix() -> None:
    # The gateway's own venv has no vLLM: exactly the mistake the check is for.
    problem = await check_interpreter(sys.executable, {"PATH": os.defpath})
    assert problem is not None and problem.permanent
    assert "vLLM is not installed" in problem.cause and sys.executable in problem.cause
    assert "scripts/install_engine.sh" in problem.fix and "engines.python" in problem.fix


async def test_a_missing_or_broken_interpreter_is_a_permanent_problem(tmp_path: Path) -> None:
    missing = await check_interpreter(str(tmp_path / "nope" / "python"), {})
    assert missing is not None and missing.permanent and "cannot be run" in missing.cause
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'bad interpreter' >&2\nexit 1\n")
    broken.chmod(0o755)
    failing = await check_interpreter(str(broken), {"PATH": os.defpath})
    assert failing is not None and "bad interpreter" in failing.cause
    assert failing.fix == INSTALL_FIX


async def test_an_interpreter_with_vllm_passes(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {"PATH": os.defpath, "PYTHONPATH": str(fake.parent)}
    assert await check_interpreter(sys.executable, env) is None


async def test_a_slow_interpreter_proves_nothing(tmp_path: Path) -> None:
    slow = tmp_path / "python"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    assert await check_interpreter(str(slow), {"PATH": os.defpath}, timeout_s=0.3) is None


async def test_the_stub_needs_no_check_and_a_missing_model_directory_is_found(
    tmp_path: Path,
) -> None:
    assert await preflight(EngineSpec(kind="stub"), "/nope", "/nope", {}) is None
    assert check_model_path(str(tmp_path)) is None
    assert check_model_path("org/model-id") is None  # a hub id: only vLLM can resolve it
    problem = check_model_path(str(tmp_path / "missing"))
    assert problem is not None and problem.permanent and "does not exist" in problem.cause


@pytest.mark.parametrize(
    ("tail", "cause", "permanent"),
    [
        ("ModuleNotFoundError: No module named 'vllm'", "vLLM cannot be imported", True),
        ("ModuleNotFoundError: No module named 'torch'", "lacks the module torch", True),
        ("api_server.py: error: unrecognized arguments: --bogus", "line: --bogus", True),
        ("OSError: /m does not appear to have a file named config.json", "not found", True),
        ("OSError: [Errno 98] Address already in use", "port was taken", False),
        ("torch.OutOfMemoryError: CUDA out of memory.", "ran out of memory", False),
    ],
)
def test_an_early_exit_is_classified_from_the_log(tail: str, cause: str, permanent: bool) -> None:
    text = f"{START_MARKER}python -m vllm ...\nINFO loading\n{tail}\n"
    problem = classify_exit(1, text, LOG)
    assert cause in problem.cause and problem.permanent is permanent


def test_only_the_last_start_counts_and_unknown_exits_name_the_log() -> None:
    text = (
        f"{START_MARKER}first\nModuleNotFoundError: No module named 'vllm'\n"
        f"{START_MARKER}second\nsomething else went wrong\n"
    )
    problem = classify_exit(2, text, LOG)
    assert not problem.permanent
    assert "exited with code 2" in problem.cause and "something else went wrong" in problem.cause
    assert str(LOG) in problem.fix
    assert "signal 9" in classify_exit(-9, text, LOG).cause
    slow = classify_exit(None, text, LOG)
    assert "did not become ready" in slow.cause and "startup_timeout_s" in slow.fix
