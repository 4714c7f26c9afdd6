"""Quantization of a prepared model into a checkpoint vLLM serves: ``vgate models quantize``.

Only AWQ is supported: 4-bit integer weights with 16-bit activations (W4A16),
saved in compressed-tensors format, which vLLM recognises from the checkpoint's
config.json: the engine spec needs no ``quantization:`` (``awq`` there is an
error, the format being compressed-tensors). vLLM's CPU kernel for it computes
in bfloat16 only, so the checkpoint is saved in bfloat16 and ``dtype: auto`` or
``bfloat16`` serves it, while ``float32`` fails.

llmcompressor's pins conflict with the engine venv's (DESIGN.md §7), so the
work happens in a tool venv of its own (scripts/install_quant.sh), whose python
runs ``quantize_awq.py`` by path. That script writes into a temporary sibling of
the output directory and renames it into place with a marker file inside: an
output directory counts as done only when it holds the marker, so a second run
does nothing. Ctrl-C stops the child and removes its temporary directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from engines.models.prepare import DEFAULT_MODEL_NAME, default_cache_dir
from engines.models.quantize_awq import MARKER_NAME, PROGRESS_PREFIX, TEMP_INFIX
from engines.models.tooling import OFFLINE_TOOL_ENV, Progress, exclusive_lock, run_tool

QUANT_VENV_ENV = "VGATE_QUANT_VENV"
AWQ_SUFFIX = "-awq-w4a16"
METHODS = ("awq",)

_REPO_ROOT = Path(__file__).resolve().parents[2]
_AWQ_SCRIPT = Path(__file__).resolve().with_name("quantize_awq.py")


class QuantizationError(RuntimeError):
    """A model could not be quantized; the message says what to do."""


def default_quant_python(environ: Mapping[str, str] = os.environ) -> Path:
    """The quantization venv's python: ``$VGATE_QUANT_VENV``, else ``.venv-quant`` in the repo."""
    venv = environ.get(QUANT_VENV_ENV)
    root = Path(venv).expanduser() if venv else _REPO_ROOT / ".venv-quant"
    return root / "bin" / "python"


def default_awq_dir(model_dir: Path) -> Path:
    """Where the AWQ checkpoint of `model_dir` goes by default: ``<model_dir>-awq-w4a16``."""
    return model_dir.with_name(model_dir.name + AWQ_SUFFIX)


def is_quantized(model_dir: Path) -> bool:
    """True when `model_dir` is a complete quantized checkpoint (its marker exists)."""
    return (model_dir / MARKER_NAME).is_file()


def quantize_awq(
    model_dir: Path,
    out_dir: Path | None = None,
    quant_python: Path | None = None,
    progress: Progress = print,
) -> Path:
    """Make sure an AWQ W4A16 checkpoint of `model_dir` exists; return its directory.

    Does nothing (and says so) when `out_dir` already holds one. Takes about five
    minutes for SmolLM2-135M on two CPU cores. Raises `QuantizationError` when it
    fails; no partial output is left behind.
    """
    source = model_dir.expanduser().resolve()
    target = (out_dir.expanduser() if out_dir is not None else default_awq_dir(source)).resolve()
    if is_quantized(target):
        progress(f"{target.name}: already quantized at {target}; nothing to do")
        return target
    if not (source / "config.json").is_file():
        raise QuantizationError(f"{source} is not a model directory (it has no config.json)")
    python = quant_python if quant_python is not None else default_quant_python()
    if not os.access(python, os.X_OK):
        raise QuantizationError(
            f"quantization python {python} not found; run scripts/install_quant.sh first "
            f"(or set {QUANT_VENV_ENV})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    waiting = f"another process is quantizing into {target.parent}; waiting for it"
    with exclusive_lock(target.parent / f".{target.name}.lock", progress, waiting):
        if is_quantized(target):
            progress(f"{target.name}: quantized by another process at {target}")
            return target
        if target.exists():
            raise QuantizationError(
                f"{target} exists but is not a finished quantization (no {MARKER_NAME}); "
                "remove it or choose another --out"
            )
        _remove_leftovers(target, progress)
        progress(f"quantizing {source} to AWQ W4A16 (about 5 minutes on 2 CPU cores)")
        try:
            run_tool(
                [str(python), str(_AWQ_SCRIPT), str(source), str(target)],
                progress,
                QuantizationError,
                forward_prefix=PROGRESS_PREFIX,
                extra_env=OFFLINE_TOOL_ENV,
            )
        except BaseException:
            _remove_leftovers(target, progress)
            raise
    if not is_quantized(target):
        raise QuantizationError(f"the quantization script finished but left no {target}")
    progress(f"{target.name}: ready at {target} (serve it with dtype auto or bfloat16)")
    return target


def quantize_main(argv: list[str] | None = None) -> int:
    """``vgate models quantize``: returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="vgate models quantize",
        description="Quantize a model directory into a 4-bit checkpoint that vLLM serves.",
    )
    parser.add_argument(
        "--method", default="awq", choices=METHODS, help="quantization method (default: awq)"
    )
    parser.add_argument(
        "--source",
        type=Path,
        help=f"model directory (default: the prepared {DEFAULT_MODEL_NAME} in the model cache)",
    )
    parser.add_argument("--out", type=Path, help=f"output directory (default: SOURCE{AWQ_SUFFIX})")
    args = parser.parse_args(argv)
    source: Path = (
        args.source if args.source is not None else default_cache_dir() / DEFAULT_MODEL_NAME
    )
    try:
        if args.source is None and not (source / "config.json").is_file():
            raise QuantizationError(
                f"the default model is not prepared at {source}; run `vgate models prepare` first"
            )
        quantize_awq(source, args.out)
    except QuantizationError as error:
        print(f"vgate models quantize: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vgate models quantize: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


def _remove_leftovers(target: Path, progress: Progress) -> None:
    """Delete temporary directories of `target` left by interrupted runs (lock held)."""
    for entry in target.parent.glob(f".{target.name}{TEMP_INFIX}*"):
        if entry.is_dir():
            progress(f"removing {entry.name} left by an interrupted run")
            shutil.rmtree(entry, ignore_errors=True)
