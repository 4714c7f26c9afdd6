"""The argv and environment vgate builds for vLLM: how GPU-only paths are tested here."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from engines.process import build_argv, build_env
from engines.spec import EngineSpec


def argv_of(**fields: Any) -> tuple[str, ...]:
    spec = EngineSpec.model_validate(fields)
    return build_argv(spec, "/venv/bin/python", "/models/m", "served", 8123)


def flag(argv: tuple[str, ...], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_cpu_defaults() -> None:
    argv = argv_of(dtype="float32", max_model_len=2048)
    assert argv[:3] == ("/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    assert flag(argv, "--model") == "/models/m"
    assert flag(argv, "--served-model-name") == "served"
    assert flag(argv, "--port") == "8123"
    assert flag(argv, "--dtype") == "float32"
    assert flag(argv, "--max-model-len") == "2048"
    assert "--tensor-parallel-size" not in argv
    env = build_env(EngineSpec(), 0, base={})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["VLLM_USE_AOT_COMPILE"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_speculative_quantization_prefix_caching_and_extras() -> None:
    speculative = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
    argv = argv_of(
        speculative=speculative,
        quantization="awq",
        enable_prefix_caching=False,
        max_num_seqs=16,
        extra_args=["--enforce-eager"],
    )
    assert json.loads(flag(argv, "--speculative-config")) == speculative
    assert flag(argv, "--quantization") == "awq"
    assert "--no-enable-prefix-caching" in argv
    assert flag(argv, "--max-num-seqs") == "16"
    assert argv[-1] == "--enforce-eager"
    assert "--enable-prefix-caching" in argv_of(enable_prefix_caching=True)


def test_cuda_replicas_get_disjoint_gpu_sets() -> None:
    spec = EngineSpec(
        device="cuda", replicas=2, tensor_parallel_size=2, gpu_memory_utilization=0.85
    )
    assert build_env(spec, 0, base={})["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert build_env(spec, 1, base={})["CUDA_VISIBLE_DEVICES"] == "2,3"
    argv = build_argv(spec, "py", "m", "s", 1)
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert "VLLM_CPU_KVCACHE_SPACE" not in build_env(spec, 0, base={})


def test_explicit_gpu_ids_and_spec_env_win() -> None:
    spec = EngineSpec(
        device="cuda", replicas=2, gpu_ids=((3,), (5,)), env={"CUDA_VISIBLE_DEVICES": "7"}
    )
    assert build_env(spec, 1, base={})["CUDA_VISIBLE_DEVICES"] == "7"
    spec = EngineSpec(device="cuda", replicas=2, gpu_ids=((3,), (5,)))
    assert build_env(spec, 1, base={})["CUDA_VISIBLE_DEVICES"] == "5"


def test_stub_kind_runs_the_fake_engine() -> None:
    argv = argv_of(kind="stub", extra_args=["--itl-ms", "5"])
    assert argv[:3] == (sys.executable, "-m", "engines.stub")
    assert flag(argv, "--model") == "served"
    assert argv[-2:] == ("--itl-ms", "5")


@pytest.mark.gpu
def test_replica_sees_only_its_gpus() -> None:
    """On a GPU machine, the env built for replica 0 exposes exactly its GPU set."""
    torch_check = "import torch; print(torch.cuda.device_count())"
    spec = EngineSpec(device="cuda", replicas=1, tensor_parallel_size=1)
    out = subprocess.run(
        [sys.executable, "-c", torch_check],
        env=build_env(spec, 0),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "1"
