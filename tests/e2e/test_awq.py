"""`vgate models quantize --method awq` on the CPU, then the checkpoint served by real vLLM.

The quantization venv is installed by scripts/install_quant.sh and the AWQ
checkpoint is written beside the prepared default model in the model cache,
so both are reused by later runs (the first run quantizes for several minutes,
then vLLM warms up for a few more).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from engines.models.prepare import prepare_default_model
from engines.models.quantize import quantize_awq
from tests.helpers.processes import free_port, run_process

# Calibration and vLLM's W4A16 CPU kernel run in bfloat16: see tests/conftest.py.
pytestmark = [pytest.mark.e2e, pytest.mark.bf16_cpu]

AWQ_MODEL = "smollm2-135m-awq"
STARTUP_TIMEOUT_S = 1500
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def awq_dir() -> Path:
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install_quant.sh")], check=True)
    return quantize_awq(prepare_default_model())


@pytest.fixture(scope="module")
def gateway_url(awq_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("awq")
    engine = {
        "source": str(awq_dir),
        # vLLM's CPU kernel for W4A16 has no float32 variant.
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "health": {"startup_timeout_s": 1200},
    }
    port, admin = free_port(), free_port()
    config = {
        "engines": {"log_dir": str(directory / "logs")},
        "upstream": {"health_interval_s": 1},
        "models": [{"name": AWQ_MODEL, "engine": engine}],
        "server": {"admin_port": admin},
    }
    config_path = directory / "vgate.yaml"
    config_path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "gateway", "serve", "--config", str(config_path),
            "--port", str(port)]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with run_process(argv, f"{url}/ready", timeout=STARTUP_TIMEOUT_S):
        # /ready is about the gateway (README "Readiness"), not its engines: wait until
        # the operator's detail shows the engine healthy.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            ready = httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=30).json()
            if sum(ready["engines"].get(AWQ_MODEL, {}).values()):
                break
            assert time.monotonic() < deadline, f"engine not ready: {ready}"
            time.sleep(1)
        yield url


def test_checkpoint_declares_4bit_weights(awq_dir: Path) -> None:
    quantization = json.loads((awq_dir / "config.json").read_text())["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors"
    assert quantization["format"] == "pack-quantized"
    (group,) = quantization["config_groups"].values()
    assert group["weights"]["num_bits"] == 4
    assert group["weights"]["group_size"] == 64
    assert group["input_activations"] is None
    assert "lm_head" in quantization["ignore"]


def test_quantized_model_answers_through_the_gateway(gateway_url: str) -> None:
    client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=AWQ_MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=24,
    )
    assert "Paris" in (reply.choices[0].message.content or "")
