"""The warm-up note `vgate up` prints every 10 s while an engine starts: the engine's
latest line, readable (a long line keeps its head, vgate's own start line is not shown)."""

from __future__ import annotations

from pathlib import Path

from engines.diagnosis import START_MARKER
from engines.process import EngineProcess, LaunchPlan

COMMAND = (
    "/venv/bin/python -m vllm.entrypoints.openai.api_server --model /models/smollm2-135m "
    "--served-model-name smollm2-135m --host 127.0.0.1 --port 42089 --dtype float32 "
    "--max-model-len 2048 --tool-call-parser hermes --enable-auto-tool-choice"
)


def process_with_log(tmp_path: Path, text: str) -> EngineProcess:
    log = tmp_path / "engine.log"
    log.write_text(text)
    plan = LaunchPlan(argv=(), env={}, url="http://127.0.0.1:1", served_name="m", log_path=log)
    return EngineProcess(plan)


def test_no_engine_output_yet_is_said_so(tmp_path: Path) -> None:
    process = process_with_log(tmp_path, f"old run output\n\n{START_MARKER}{COMMAND}\n")
    assert process.last_log_line() == "(no output yet)"


def test_a_long_line_keeps_its_head(tmp_path: Path) -> None:
    line = (
        "(EngineCore pid=10012) WARNING 12-01 22:51:08 [shm_broadcast.py:466] No available "
        "shared memory broadcast block found in 60 seconds. This typically happens when some "
        "processes are hanging or doing some time-consuming work (e.g. compilation)."
    )
    process = process_with_log(tmp_path, f"\n{START_MARKER}{COMMAND}\n{line}\n\n")
    note = process.last_log_line()
    assert note.startswith("(EngineCore pid=10012) WARNING 12-01 22:51:08")
    assert note.endswith("...")
    assert len(note) == 160


def test_a_short_line_is_shown_whole(tmp_path: Path) -> None:
    line = "(Worker pid=1) INFO [cpu_model_runner.py:87] Warming up model for the compilation..."
    process = process_with_log(tmp_path, f"\n{START_MARKER}{COMMAND}\n{line}\n")
    assert process.last_log_line() == line
