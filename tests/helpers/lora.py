"""A random LoRA adapter for the embedded default model (SmolLM2-135M), made without peft.

vLLM loads a PEFT-format directory: ``adapter_config.json`` (``peft_type: LORA``) and
``adapter_model.safetensors`` with one ``lora_A``/``lora_B`` pair per targeted module.
The weights are random (seeded), so the adapter's answers differ from the base model's
without meaning anything: enough to show that an engine serves the adapter under its
own name. torch and safetensors live only in the engine venv, so the tensors are
written by a short script run with that interpreter (the test venv stays small).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

RANK = 8
ALPHA = 16
TARGET_MODULES = ("q_proj", "v_proj")
# SmolLM2-135M: hidden 576, 30 layers, 9 query heads and 3 key/value heads of 64.
HIDDEN = 576
LAYERS = 30
OUT_FEATURES = {"q_proj": 9 * 64, "v_proj": 3 * 64}

_WRITER = """
import json, sys
import torch
from safetensors.torch import save_file

target, rank, layers, hidden, outs, seed = sys.argv[1:7]
rank, layers, hidden, seed = int(rank), int(layers), int(hidden), int(seed)
outs = json.loads(outs)
generator = torch.Generator().manual_seed(seed)
tensors = {}
for layer in range(layers):
    for module, out in outs.items():
        prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
        a = torch.randn(rank, hidden, generator=generator) * 0.02
        b = torch.randn(out, rank, generator=generator) * 0.02
        tensors[f"{prefix}.lora_A.weight"] = a.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b.contiguous()
save_file(tensors, f"{target}/adapter_model.safetensors")
"""


def adapter_config(base_model: str) -> dict[str, object]:
    """The ``adapter_config.json`` of the adapter (what peft's LoraConfig would write)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(TARGET_MODULES),
        "base_model_name_or_path": base_model,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }


def build_lora_adapter(target: Path, engine_python: Path, base_model: str, seed: int = 0) -> Path:
    """Write a random rank-8 adapter for SmolLM2-135M into ``target`` (created); returns it.

    Raises subprocess.CalledProcessError (with the script's output) when the engine
    venv cannot write the tensors."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "adapter_config.json").write_text(json.dumps(adapter_config(base_model), indent=2))
    subprocess.run(
        [str(engine_python), "-c", _WRITER, str(target), str(RANK), str(LAYERS), str(HIDDEN),
         json.dumps(OUT_FEATURES), str(seed)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return target
