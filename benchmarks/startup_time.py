"""Time from ``vgate up`` to the first streamed token, cold and warm.

cold: an empty model cache (download + GGUF conversion) and no vLLM compile
cache, as on a fresh machine with the packages already installed; warm: the
second start, with both caches filled. Both caches of the cold run are new folders
of its own (``VGATE_MODEL_CACHE``, vLLM's ``VLLM_CACHE_ROOT``): the machine's shared
caches are left as they are (the cold run used to delete vLLM's compile cache, so the
next real start paid for compiling again). The installs themselves (pip) are not
timed: they depend on the network.

    .venv/bin/python -m benchmarks.startup_time            # cold, then warm
    .venv/bin/python -m benchmarks.startup_time --warm-only
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from benchmarks.procs import free_port

QUESTION: Any = [{"role": "user", "content": "What is the capital of France?"}]


def first_token_after(env: dict[str, str], log: Path, timeout_s: float) -> tuple[float, str]:
    """Start ``vgate up``; return seconds until its first streamed token, and the answer."""
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "up", "--port", str(port)]
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)  # fmt: skip
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    try:
        while time.monotonic() - started < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"vgate up exited early; see {log}")
            try:
                stream = client.chat.completions.create(
                    model="smollm2-135m", messages=QUESTION, stream=True, temperature=0,
                    max_tokens=16, timeout=30,
                )  # fmt: skip
                text = ""
                first: float | None = None
                chunk: Any
                for chunk in stream:
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece and first is None:
                        first = time.monotonic() - started
                    text += piece or ""
                if first is not None:
                    return first, text
            except (openai.APIConnectionError, openai.APIStatusError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"no token within {timeout_s} s; see {log}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.startup_time", description=__doc__)
    parser.add_argument("--warm-only", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="vgate-startup-"))
    env = dict(os.environ)
    runs: list[tuple[str, dict[str, str]]] = []
    if not args.warm_only:
        cold_env = env | {
            "VGATE_MODEL_CACHE": str(workdir / "models"),
            "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),  # no compile cache yet
        }
        runs.append(("cold", cold_env))
        runs.append(("warm", cold_env))
    else:
        runs.append(("warm", env))
    for label, run_env in runs:
        seconds, text = first_token_after(run_env, workdir / f"{label}.log", args.timeout)
        print(f"{label}: command to first token {seconds:.1f} s  (answer: {text.strip()!r})",
              flush=True)  # fmt: skip
    print(f"logs in {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
