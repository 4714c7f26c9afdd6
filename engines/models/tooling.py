"""Running the model tools (GGUF conversion, quantization) as child processes.

Both run in their own virtualenvs, relay ``<prefix>: ...`` lines as progress,
keep the rest of the output for the error message, and must never be left
running when vgate is interrupted. One lock file per output keeps two vgate
processes from preparing the same thing at once.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

Progress = Callable[[str], None]

OFFLINE_TOOL_ENV: Mapping[str, str] = {
    # Nothing may be fetched from a hub, and progress bars would garble the log.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONUNBUFFERED": "1",
}
_STOP_GRACE_S = 10.0


def run_tool(
    argv: Sequence[str],
    progress: Progress,
    error: type[Exception],
    forward_prefix: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> None:
    """Run ``argv``; forward lines starting with ``forward_prefix`` as progress.

    Raises ``error`` with the output's tail when the tool fails. If this process
    is interrupted, the child gets SIGTERM (so it can delete its temporary
    output), then SIGKILL after a grace period, before the exception propagates.
    """
    tail: deque[str] = deque(maxlen=25)
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(extra_env or {})},
    ) as proc:
        assert proc.stdout is not None
        try:
            for raw in proc.stdout:
                line = raw.rstrip()
                if forward_prefix is not None and line.startswith(forward_prefix):
                    progress(line)
                elif line:
                    tail.append(line)
        except BaseException:  # e.g. Ctrl-C: never leave the child writing on its own
            _stop(proc)
            raise
    if proc.returncode != 0:
        command = f"{Path(argv[0]).name} {' '.join(argv[1:3])} ..."
        raise error(f"{command} exited with {proc.returncode}:\n" + "\n".join(tail))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=_STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def exclusive_lock(path: Path, progress: Progress, waiting: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released when the process dies, too)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
