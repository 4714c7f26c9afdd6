"""Why an engine cannot start: checks made before spawning it, and the reading of an early exit.

A start failure must be reported at once, with its cause and its fix, not as an
engine that never becomes ready. Two sources of truth:

* :func:`preflight`, before a vLLM engine is spawned: the interpreter exists and
  runs, vLLM is installed for it (``importlib.util.find_spec``, which is fast:
  importing vLLM itself takes seconds), the model directory exists;
* :func:`classify_exit`, when the engine exited (or never answered) while starting:
  the last run's part of its log file, matched against known causes.

A :class:`StartProblem` says whether retrying can help (``permanent``): an
interpreter without vLLM will not grow one, so the supervisor gives up at once
instead of spending its restart budget; a port taken by someone else may be free
on the next try. This module imports nothing of ours but the spec.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engines.spec import EngineSpec

INSTALL_FIX = (
    "run `scripts/install_engine.sh` or set `engines.python` (or the model's `engine.python`) "
    "to an interpreter with vLLM installed"
)
PREFLIGHT_TIMEOUT_S = 30.0
"""Bound on the interpreter check; one that takes longer proves nothing (the start will tell)."""
START_MARKER = "=== vgate: starting "
"""The line :class:`engines.process.EngineProcess` writes before each start."""

_VLLM_MISSING_EXIT = 3
_VLLM_CHECK = (
    "import importlib.util, sys; "
    f"sys.exit(0 if importlib.util.find_spec('vllm') else {_VLLM_MISSING_EXIT})"
)
_OUTPUT_LIMIT = 300
_SHORTAGES = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EAGAIN, errno.EMFILE, errno.ENFILE}
)
"""Spawn failures that say the machine lacks something now (a full disk, memory, process
slots, file descriptors), not that the engine's set-up is wrong: worth another try."""


@dataclass(frozen=True)
class StartProblem:
    """Why an engine cannot start, what to do about it, and whether a retry could help."""

    cause: str
    fix: str
    permanent: bool

    def describe(self) -> str:
        return f"{self.cause}; fix: {self.fix}"


async def preflight(
    spec: EngineSpec, python: str, model_path: str, env: Mapping[str, str]
) -> StartProblem | None:
    """The reason a vLLM engine for ``spec`` cannot start, found before spawning it (None:
    none found). The stub needs no check: it runs in vgate's own interpreter."""
    if spec.kind != "vllm":
        return None
    return await check_interpreter(python, env) or check_model_path(model_path)


async def check_interpreter(
    python: str, env: Mapping[str, str], timeout_s: float = PREFLIGHT_TIMEOUT_S
) -> StartProblem | None:
    """Whether ``python`` runs and has vLLM installed (with the engine's environment)."""
    try:
        process = await asyncio.create_subprocess_exec(
            python, "-c", _VLLM_CHECK,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=dict(env),
        )  # fmt: skip
    except OSError as exc:
        cause = f"the engine interpreter {python} cannot be run ({exc.strerror or exc})"
        return StartProblem(cause, INSTALL_FIX, permanent=True)
    try:
        async with asyncio.timeout(timeout_s):
            output, _ = await process.communicate()
    except TimeoutError:
        return None
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode == _VLLM_MISSING_EXIT:
        cause = f"vLLM is not installed for the engine interpreter {python}"
        return StartProblem(cause, INSTALL_FIX, permanent=True)
    if process.returncode != 0:
        text = output.decode("utf-8", "replace").strip()[-_OUTPUT_LIMIT:]
        cause = f"the engine interpreter {python} fails to run: {text or process.returncode}"
        return StartProblem(cause, INSTALL_FIX, permanent=True)
    return None


def check_model_path(model_path: str) -> StartProblem | None:
    """A model ``source`` written as a path (``/``, ``./``, ``../``, ``~``) must be a
    directory; anything else is a Hugging Face id, which only vLLM can resolve."""
    if not model_path.startswith(("/", "./", "../", "~")):
        return None
    if Path(model_path).expanduser().is_dir():
        return None
    return StartProblem(
        f"the model directory {model_path} does not exist",
        "fix the model's `engine.source` (or prepare the model there)",
        permanent=True,
    )


# Known causes in an engine's output, first match wins: (pattern, cause, fix, permanent).
# `{0}` in a cause is the pattern's first group.
_KNOWN_CAUSES: tuple[tuple[re.Pattern[str], str, str, bool], ...] = (
    (
        re.compile(r"No module named '?vllm\b"),
        "vLLM cannot be imported by the engine interpreter",
        INSTALL_FIX,
        True,
    ),
    (
        re.compile(r"ModuleNotFoundError: No module named '([^']+)'"),
        "the engine interpreter lacks the module {0} that vLLM needs",
        INSTALL_FIX,
        True,
    ),
    (
        re.compile(r"(?:error: unrecognized arguments: |error: argument )(.+)"),
        "the engine rejected its command line: {0}",
        "fix the model's `engine.extra_args`",
        True,
    ),
    (
        re.compile(
            r"(does not appear to have a file named config\.json|Repo id must be"
            r"|LocalEntryNotFoundError|OfflineModeIsEnabled|is not a local folder and is not"
            r" a valid model identifier|Can't load the configuration of)"
        ),
        "the model was not found ({0})",
        "point the model's `engine.source` at a model directory, or at an id in the local "
        "Hugging Face cache (engines run offline)",
        True,
    ),
    (
        re.compile(r"(Address already in use|\[Errno 98\])"),
        "the engine's port was taken by another process ({0})",
        "nothing, if it was a race (the next start picks another free port); else check "
        "`engine.host`",
        False,
    ),
    (
        re.compile(r"(out of memory|OutOfMemoryError|No available memory for the cache blocks)"),
        "the engine ran out of memory while starting ({0})",
        "lower `max_model_len`, `max_num_seqs` or `gpu_memory_utilization` (on CPU, "
        "VLLM_CPU_KVCACHE_SPACE in `engine.env`), or give it a machine with more memory",
        False,
    ),
)


def classify_exit(exit_code: int | None, log_text: str, log_path: Path) -> StartProblem:
    """Why an engine that failed to start failed: ``exit_code`` (None: still running,
    never ready) and the text at the end of its log, of which only the last start's part
    counts."""
    current = log_text.rsplit(START_MARKER, 1)[-1]
    for pattern, cause, fix, permanent in _KNOWN_CAUSES:
        match = pattern.search(current)
        if match is not None:
            detail = (match.group(1) if match.groups() else match.group(0)).strip()
            return StartProblem(cause.format(detail[:_OUTPUT_LIMIT]), fix, permanent)
    lines = [line.strip() for line in current.splitlines()[1:] if line.strip()]
    last = lines[-1][-_OUTPUT_LIMIT:] if lines else "no output"
    if exit_code is None:
        cause = f"the engine did not become ready in time (last output: {last})"
        fix = f"see {log_path}; raise `engine.health.startup_timeout_s` if it was only slow"
        return StartProblem(cause, fix, permanent=False)
    if exit_code < 0:
        cause = f"the engine was killed by signal {-exit_code} while starting (last output: {last})"
        return StartProblem(cause, f"see {log_path} (signal 9: out of memory?)", permanent=False)
    cause = f"the engine exited with code {exit_code} while starting (last output: {last})"
    return StartProblem(cause, f"see {log_path}", permanent=False)


def spawn_problem(exc: OSError, python: str, host: str) -> StartProblem:
    """Why spawning an engine failed: its interpreter cannot be run, or the log not
    opened (permanent: the set-up is wrong); or the machine lacks something for now, a
    full disk, memory, process slots or file descriptors (:data:`_SHORTAGES`: retried
    within the restart budget, like any failed start)."""
    detail = exc.strerror or str(exc)
    if exc.errno in _SHORTAGES:
        cause = f"the engine could not be spawned ({exc.filename or ''}: {detail})"
        return StartProblem(cause, "free what the machine lacks (disk, memory)", permanent=False)
    if exc.filename is not None and str(exc.filename) == python:
        cause = f"the engine interpreter {exc.filename} cannot be run ({detail})"
        return StartProblem(cause, INSTALL_FIX, permanent=True)
    cause = f"the engine could not be spawned ({exc.filename or ''}: {detail})"
    return StartProblem(
        cause, f"check `engine.host` ({host}) and `engines.log_dir`", permanent=True
    )
