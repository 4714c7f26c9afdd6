"""`engines.models.quantize`: idempotence, clear errors, and clean-up around the quantization child.

The quantization itself (minutes, in its own venv) is exercised by tests/e2e/test_awq.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from engines.models.quantize import (
    QuantizationError,
    default_awq_dir,
    default_quant_python,
    is_quantized,
    quantize_awq,
    quantize_main,
)
from engines.models.quantize_awq import MARKER_NAME, TEMP_INFIX


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return model


def test_default_output_sits_beside_the_source(model_dir: Path) -> None:
    assert default_awq_dir(model_dir) == model_dir.parent / "tiny-model-awq-w4a16"


def test_quant_venv_comes_from_the_environment() -> None:
    assert default_quant_python({"VGATE_QUANT_VENV": "/opt/q"}) == Path("/opt/q/bin/python")
    assert default_quant_python({}).parts[-3:] == (".venv-quant", "bin", "python")


def test_a_marked_output_is_not_quantized_again(model_dir: Path, tmp_path: Path) -> None:
    out = default_awq_dir(model_dir)
    out.mkdir()
    (out / MARKER_NAME).write_text("{}\n")
    said: list[str] = []

    missing_python = tmp_path / "no-venv" / "bin" / "python"  # never needed
    assert quantize_awq(model_dir, quant_python=missing_python, progress=said.append) == out
    assert is_quantized(out)
    assert len(said) == 1 and "nothing to do" in said[0]


def test_missing_quant_venv_names_the_installer(model_dir: Path, tmp_path: Path) -> None:
    missing_python = tmp_path / "no-venv" / "bin" / "python"
    with pytest.raises(QuantizationError, match=r"scripts/install_quant\.sh"):
        quantize_awq(model_dir, quant_python=missing_python, progress=lambda _: None)
    assert not default_awq_dir(model_dir).exists()


def test_source_must_be_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match=r"no config\.json"):
        quantize_awq(tmp_path / "nothing", quant_python=Path(sys.executable))


def test_an_unmarked_output_directory_is_left_alone(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "someone-elses"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(QuantizationError, match="not a finished quantization"):
        quantize_awq(model_dir, out, quant_python=Path(sys.executable), progress=lambda _: None)
    assert (out / "keep.txt").read_text() == "mine"


def test_a_failing_script_reports_its_output_and_leaves_nothing(
    model_dir: Path, tmp_path: Path
) -> None:
    # The real script, run by this venv's python, which has no llmcompressor.
    said: list[str] = []
    out = tmp_path / "out"
    with pytest.raises(QuantizationError, match="exited with 1") as failure:
        quantize_awq(model_dir, out, quant_python=Path(sys.executable), progress=said.append)
    assert "ModuleNotFoundError" in str(failure.value)
    assert "quantize: importing torch, transformers and llmcompressor" in said
    assert not out.exists()
    assert not list(tmp_path.glob(f".out{TEMP_INFIX}*"))


def test_interrupting_stops_the_child_and_removes_its_temp_dir(
    model_dir: Path, tmp_path: Path
) -> None:
    # A stand-in interpreter that behaves like the script's first seconds:
    # it creates its temporary directory, says so, then keeps working.
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(
        "#!/bin/sh\n"
        'out="$3"\n'
        'mkdir "$(dirname "$out")/.$(basename "$out").tmp-fake"\n'
        'echo "$$" > "$(dirname "$out")/child.pid"\n'
        "echo 'quantize: working'\n"
        "exec sleep 60\n"
    )
    fake_python.chmod(0o755)
    out = tmp_path / "out"

    def interrupt(line: str) -> None:
        if line == "quantize: working":  # Ctrl-C while the child works
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quantize_awq(model_dir, out, quant_python=fake_python, progress=interrupt)
    child = int((tmp_path / "child.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not out.exists()
    assert not list(tmp_path.glob(f".out{TEMP_INFIX}*"))


def test_only_awq_is_supported(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        quantize_main(["--method", "gptq"])
    assert exit_.value.code == 2
    assert "invalid choice: 'gptq'" in capsys.readouterr().err


def test_cli_without_the_venv_fails_with_advice(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("VGATE_QUANT_VENV", str(tmp_path / "no-venv"))
    code = quantize_main(
        ["--method", "awq", "--source", str(model_dir), "--out", str(tmp_path / "o")]
    )
    assert code == 1
    assert "scripts/install_quant.sh" in capsys.readouterr().err


def test_cli_without_a_prepared_default_model_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VGATE_MODEL_CACHE", str(tmp_path / "empty-cache"))
    assert quantize_main([]) == 1
    assert "vgate models prepare" in capsys.readouterr().err
