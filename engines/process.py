"""One vLLM OpenAI server as a child process: argv, spawn, readiness, probe, stop.

The child runs in its own process group (so a terminal's Ctrl-C reaches vgate,
which stops engines in order) and, on Linux, with a parent-death signal: if
vgate itself is killed, even with SIGKILL, the kernel sends the engine SIGTERM
and vLLM tears down its own workers. An engine that does not go on SIGTERM (or
leaves part of its group behind) is killed by the guardian
(:mod:`engines.guardian`), which outlives vgate. Nothing is left orphaned. Its
output goes through a pipe to its log's keeper, which rotates it (:mod:`engines.engine_log`);
its environment is built by :mod:`engines.engine_env`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engines.diagnosis import START_MARKER
from engines.engine_env import ENGINE_KEY_ENV as ENGINE_KEY_ENV
from engines.engine_env import build_env as build_env
from engines.engine_env import inherited as inherited
from engines.engine_log import read_tail, start_keeper, write_line
from engines.guardian import EngineGuardian
from engines.spec import LOG_KEEP, LOG_MAX_BYTES, EngineSpec

if TYPE_CHECKING:
    import aiohttp

_PR_SET_PDEATHSIG = 1
_API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
_REAP_TIMEOUT_S = 5.0
_LOG_SETTLE_S = 2.0  # an exited engine's last output reaching its log (a straggler aside)
STOP_OVERRUN_S = _REAP_TIMEOUT_S + 2 * _LOG_SETTLE_S
"""The longest :meth:`EngineProcess.stop` takes past its ``timeout_s``: the SIGKILLed
group's reaping, then the log's settling, twice at worst (the keeper cut off between)."""
_NOT_SERVED = frozenset({400, 404, 405, 501})


def probe_request(runner: str | None, served_name: str) -> tuple[str, dict[str, object]]:
    """The path and body of the stuck probe for an engine of ``runner``: what it serves."""
    if runner == "pooling":
        return "/v1/embeddings", {"model": served_name, "input": "ping"}
    return "/v1/completions", {"model": served_name, "prompt": "ping", "max_tokens": 1}


class EngineStartError(RuntimeError):
    """The engine exited or did not become ready in time; the message holds its log tail."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything needed to start one replica; pure data, easy to assert on in tests.

    ``api_key`` is the key the engine demands on its ``/v1`` routes; it reaches the
    engine as ``VLLM_API_KEY`` in ``env`` (vLLM's own variable for ``--api-key``), not in
    ``argv``: any user on the host can read a command line (``ps``), and the engine's log
    starts with it. Neither shows in ``repr``."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(repr=False)
    url: str
    served_name: str
    log_path: Path
    api_key: str | None = field(default=None, repr=False)
    runner: str | None = None
    log_max_bytes: int = LOG_MAX_BYTES
    log_keep: int = LOG_KEEP
    """Rotated log files kept beside the current one (:mod:`engines.engine_log`)."""

    def auth_headers(self) -> dict[str, str]:
        """What every request of vgate's own to the engine carries."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def build_argv(
    spec: EngineSpec, python: str, model_path: str, served_name: str, port: int
) -> tuple[str, ...]:
    """The command line for one replica of ``spec`` (vLLM's server, or the stub)."""
    if spec.kind == "stub":
        stub = [sys.executable, "-m", "engines.stub", "--host", spec.host, "--port", str(port)]
        stub += ["--model", served_name]
        for adapter in spec.served_adapters():
            stub += ["--lora", f"{adapter}={served_name}"]
        if spec.runner is not None:
            stub += ["--runner", spec.runner]
        if spec.scheduling_policy is not None:
            stub += ["--scheduling-policy", spec.scheduling_policy]
        return (*stub, *spec.extra_args)
    argv = [
        python, "-m", _API_SERVER_MODULE,
        "--model", model_path,
        "--served-model-name", served_name,
        "--host", spec.host,
        "--port", str(port),
        "--dtype", spec.dtype,
    ]  # fmt: skip
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.tensor_parallel_size > 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel_size)]
    if spec.quantization is not None:
        argv += ["--quantization", spec.quantization]
    if spec.speculative is not None:
        argv += ["--speculative-config", json.dumps(spec.speculative, sort_keys=True)]
    if spec.enable_prefix_caching is True:
        argv.append("--enable-prefix-caching")
    elif spec.enable_prefix_caching is False:
        argv.append("--no-enable-prefix-caching")
    argv += _feature_args(spec)
    argv += list(spec.extra_args)
    return tuple(argv)


def _feature_args(spec: EngineSpec) -> list[str]:
    """The flags of the runner, LoRA adapters, parsers and chat template."""
    argv: list[str] = []
    if spec.runner is not None:
        argv += ["--runner", spec.runner]
    if spec.lora_modules:
        argv.append("--enable-lora")
        argv += ["--lora-modules", *(f"{m.name}={m.path}" for m in spec.lora_modules)]
    if spec.max_lora_rank is not None:
        argv += ["--max-lora-rank", str(spec.max_lora_rank)]
    if spec.max_loras is not None:
        argv += ["--max-loras", str(spec.max_loras)]
    if spec.tool_call_parser is not None:
        argv += ["--tool-call-parser", spec.tool_call_parser]
    if spec.enable_auto_tool_choice:
        argv.append("--enable-auto-tool-choice")
    if spec.reasoning_parser is not None:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    if spec.chat_template is not None:
        argv += ["--chat-template", spec.chat_template]
    if spec.scheduling_policy is not None:
        argv += ["--scheduling-policy", spec.scheduling_policy]
    return argv


def die_with_parent(parent_pid: int) -> None:  # pragma: no cover - in the child before exec
    """Ask Linux to SIGTERM this child when the thread that spawned it dies.

    A parent that died between the fork and the ``prctl`` call sends no signal any
    more: then the child's parent is no longer ``parent_pid``, and it ends itself as the
    signal would have."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class EngineProcess:
    """A started (or startable) engine child. Spawn from the event loop's thread."""

    plan: LaunchPlan
    guardian: EngineGuardian | None = None
    """Told of the child's process group, to end it should vgate die without stopping it."""
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _keeper: subprocess.Popen[bytes] | None = field(default=None, init=False)
    """The process writing the engine's output to its rotated log."""
    started_at: float = field(default=0.0, init=False)

    def spawn(self) -> None:
        """Start the child, its output appended to the plan's (private, rotated) log file
        by a keeper process (:mod:`engines.engine_log`). Raises OSError when the
        interpreter cannot be executed or the log not opened."""
        plan = self.plan
        marker = f"\n{START_MARKER}{' '.join(plan.argv)}\n"
        write_line(plan.log_path, plan.log_max_bytes, plan.log_keep, marker)
        keeper, output = start_keeper(plan.log_path, plan.log_max_bytes, plan.log_keep)
        try:
            self._popen = subprocess.Popen(
                plan.argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=dict(plan.env),
                start_new_session=True,
                preexec_fn=functools.partial(die_with_parent, os.getpid()),
            )
        except BaseException:  # no engine: nothing to keep, and no stop() will reap it
            if keeper is not None:
                keeper.kill()
                keeper.wait()
            raise
        finally:
            os.close(output)  # the engine's copy is the only one: its end ends the keeper
        self._keeper = keeper
        if self.guardian is not None:
            self.guardian.watch(self._popen.pid)  # its own session: the group id is its pid
        self.started_at = time.time()

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit status."""
        return self._popen.poll() if self._popen is not None else None

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    async def wait_ready(
        self,
        session: aiohttp.ClientSession,
        timeout_s: float,
        progress: Callable[[str], None],
    ) -> None:
        """Poll ``/health`` then ``/v1/models`` until both answer; report progress meanwhile."""
        deadline = time.monotonic() + timeout_s
        next_note = time.monotonic() + 10
        while True:
            code = self.exit_code()
            if code is not None:
                await self.log_written(_LOG_SETTLE_S)  # its last words: the diagnosis
                raise EngineStartError(f"engine exited with {code}:\n{self.log_tail()}")
            if await self._answers(session, "/health") and await self._answers(
                session, "/v1/models"
            ):
                return
            now = time.monotonic()
            if now > deadline:
                raise EngineStartError(
                    f"engine not ready after {timeout_s:.0f} s:\n{self.log_tail()}"
                )
            if now >= next_note:
                elapsed = time.time() - self.started_at
                progress(f"{self.plan.served_name}: warming up ({elapsed:.0f} s) "
                         f"- {self.last_log_line()}")  # fmt: skip
                next_note = now + 10
            await asyncio.sleep(0.5)

    async def probe_work(self, session: aiohttp.ClientSession, timeout_s: float) -> bool:
        """True when the engine does a tiny piece of the work it serves within
        ``timeout_s`` (stuck detection): a 1-token completion, or for a pooling engine
        the embedding of one word.

        An engine that answers that it does not serve the route (404, 405, 400, 501: a
        pooling model without embeddings, a model vLLM runs as pooling unasked) is
        probed with ``/v1/models`` instead: it answered at once, so it is not stuck."""
        import aiohttp  # (the supervisor's session loaded it)

        path, body = probe_request(self.plan.runner, self.plan.served_name)
        try:
            async with session.post(
                f"{self.plan.url}{path}",
                json=body,
                headers=self.plan.auth_headers(),
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError):
            return False
        if status == 200:
            return True
        if status in _NOT_SERVED:
            return await self._answers(session, "/v1/models")
        return False

    async def healthy(self, session: aiohttp.ClientSession) -> bool:
        return self.alive and await self._answers(session, "/health")

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM the engine's process group; SIGKILL whatever is left after ``timeout_s``."""
        if self._popen is None:
            return
        if self._popen.poll() is None:
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)  # a stopped (SIGSTOP) engine acts on it now
            deadline = time.monotonic() + timeout_s
            while self._popen.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        self._signal_group(signal.SIGKILL)  # stragglers in the group, if any
        deadline = time.monotonic() + _REAP_TIMEOUT_S  # reaped without blocking the loop
        while self._popen.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if self._popen.poll() is not None and self.guardian is not None:
            self.guardian.forget(self._popen.pid)  # reaped: its group id may be reused
        if not await self.log_written(_LOG_SETTLE_S) and self._keeper is not None:
            self._keeper.kill()  # a process that left the group holds the pipe: cut it off
            await self.log_written(_LOG_SETTLE_S)

    async def log_written(self, timeout_s: float) -> bool:
        """Wait (up to ``timeout_s``) until the keeper has written all the engine's output
        and exited, which it does once every process of the engine has; True if it has."""
        keeper = self._keeper
        if keeper is None:
            return True
        deadline = time.monotonic() + timeout_s
        while keeper.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return keeper.poll() is not None

    def kill(self) -> None:
        """SIGKILL the group at once (tests, and the last resort)."""
        self._signal_group(signal.SIGKILL)

    def log_tail(self, size: int = 3000) -> str:
        return read_tail(self.plan.log_path, size)

    def last_log_line(self, width: int = 160) -> str:
        """The engine's latest line of output since this start, for the warm-up note: a
        long line keeps its head (vLLM's process, level and time come first) and is cut at
        its end; vgate's own start line (the command) is not the engine's output."""
        current = self.log_tail(4000).rsplit(START_MARKER, 1)
        output = current[1].partition("\n")[2] if len(current) > 1 else current[0]
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        if not lines:
            return "(no output yet)"
        line = lines[-1]
        return line if len(line) <= width else line[: width - 3] + "..."

    def _signal_group(self, signum: int) -> None:
        if self._popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)

    async def _answers(self, session: aiohttp.ClientSession, path: str) -> bool:
        import aiohttp  # (the supervisor's session loaded it)

        try:
            async with session.get(
                f"{self.plan.url}{path}",
                headers=self.plan.auth_headers(),
                timeout=aiohttp.ClientTimeout(total=5),
            ) as response:
                await response.read()
                return response.status == 200
        except (TimeoutError, aiohttp.ClientError):
            return False
