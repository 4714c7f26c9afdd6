"""Convert a GGUF checkpoint into a Hugging Face safetensors model directory.

This file is a script for the *engine* venv (torch, transformers, gguf,
accelerate), executed by path so that it imports nothing else of vgate::

    .venv-engine/bin/python engines/models/convert_gguf.py MODEL.gguf OUT_DIR

`engines.models.prepare` runs it as a subprocess; the gateway venv never imports torch.
Each step prints one line starting with ``PROGRESS_PREFIX``, which the caller
forwards as progress; everything else (library warnings) is diagnostics.

transformers de-quantizes GGUF weights on load (`gguf_file=`), but the loaded
model keeps a GGUF `quantization_config` that `save_pretrained` cannot write
back. So a fresh model is built from the config without it, the de-quantized
state dict is loaded into it, and that model is saved. The weights are saved in
float32: Q4_1 de-quantizes exactly into float32, while a bfloat16 copy loses
precision (served under vLLM, a bf16 copy of SmolLM2-135M drifted into
nonsense; float32 answered correctly).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

PROGRESS_PREFIX = "convert: "


def _say(message: str) -> None:
    print(f"{PROGRESS_PREFIX}{message}", flush=True)


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Write config, generation config, tokenizer and safetensors weights to `out_dir`."""
    started = time.monotonic()
    _say("importing torch and transformers")
    import torch  # type: ignore[import-not-found, unused-ignore]
    from transformers import (  # type: ignore[import-not-found, unused-ignore]
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    source_dir, gguf_file = str(gguf_path.parent), gguf_path.name
    _say(f"de-quantizing {gguf_path.name}")
    loaded = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=gguf_file, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32

    _say("building a plain float32 model from the config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded

    _say(f"saving safetensors weights to {out_dir}")
    model.save_pretrained(out_dir, safe_serialization=True)
    del model

    _say("saving the tokenizer (with its chat template)")
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=gguf_file)
    if not tokenizer.chat_template:
        raise SystemExit("the GGUF file has no chat template; chat completions would fail")
    tokenizer.save_pretrained(out_dir)
    _say(f"converted in {time.monotonic() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out_dir", type=Path, help="an existing, empty output directory")
    args = parser.parse_args(argv)
    gguf_path: Path = args.gguf.resolve()
    out_dir: Path = args.out_dir
    if not gguf_path.is_file():
        parser.error(f"no such file: {gguf_path}")
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        parser.error(f"not an empty directory: {out_dir}")
    convert(gguf_path, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
