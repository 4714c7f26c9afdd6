"""Engine process hygiene: reserved flags in every spelling, path-safe names, the
allowlisted environment, private log files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from engines.deployment import Deployment, log_path
from engines.engine_log import open_private_log
from engines.process import build_env, inherited
from engines.spec import EngineSpec, reserved_flag
from gateway.config.models import ModelSettings

REJECTED = {
    "--port": "--port",
    "--port=9": "--port",
    "--served-model-name": "--served-model-name",
    "--served_model_name": "--served-model-name",
    "--served_model_name=x": "--served-model-name",
    "--served": "--served-model-name",  # argparse takes an unambiguous prefix
    "--SERVED-MODEL-NAME": "--served-model-name",
    "--model=/etc": "--model",
    "--host=0.0.0.0": "--host",
    "--dtype": "--dtype",
    "--device=cuda": "--device",
    "--tensor-parallel-size": "--tensor-parallel-size",
    "--tensor_parallel": "--tensor-parallel-size",
    "-tp": "--tensor-parallel-size",
    "-tp2": "--tensor-parallel-size",
    "-tp=2": "--tensor-parallel-size",
    "-t": "--tensor-parallel-size",
    "-q": "--quantization",
    "-qawq": "--quantization",
    "-q=awq": "--quantization",
    "--quantization=awq": "--quantization",
    "-sc": "--speculative-config",
    "-sc.method": "--speculative-config",
    "--speculative-config.method": "--speculative-config",
    "--speculative_config.num_speculative_tokens=3": "--speculative-config",
    "--max-model-len=4096": "--max-model-len",
    "--max_model_len": "--max-model-len",
    "--max-num-seqs": "--max-num-seqs",
    "--gpu_memory_utilization=0.9": "--gpu-memory-utilization",
    "--enable-prefix-caching": "--enable-prefix-caching",
    "--no-enable-prefix-caching": "--no-enable-prefix-caching",
    "--config": "--config",
    "--config=engine.yaml": "--config",
}
ALLOWED = [
    "--enforce-eager", "--max-num-batched-tokens", "8192", "--max-num-batched-tokens=8192",
    "-O3", "-1", "0.5", "--model-impl=vllm", "--kv-cache-dtype=fp8", "-pp", "--itl-ms", "5",
    "--hang", "--enable-chunked-prefill", "--config-format=hf", "-", "--", "value",
]  # fmt: skip


@pytest.mark.parametrize("arg", sorted(REJECTED))
def test_every_spelling_of_a_reserved_flag_is_rejected_at_config_load(arg: str) -> None:
    assert reserved_flag(arg) == REJECTED[arg]
    with pytest.raises(ValidationError, match=f"extra_args may not set {REJECTED[arg]} "):
        EngineSpec.model_validate({"extra_args": ["--enforce-eager", arg, "1"]})


def test_other_flags_and_values_pass() -> None:
    assert [arg for arg in ALLOWED if reserved_flag(arg) is not None] == []
    spec = EngineSpec.model_validate({"extra_args": ALLOWED})
    assert spec.extra_args == tuple(ALLOWED)


def test_the_error_names_the_spec_field_to_use() -> None:
    with pytest.raises(ValidationError, match="use tensor_parallel_size"):
        EngineSpec.model_validate({"extra_args": ["-tp", "2"]})


def managed(name: str, **fields: object) -> ModelSettings:
    return ModelSettings.model_validate({"name": name, "engine": {"kind": "stub"}, **fields})


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "..", "a..b", ".hidden", "-x", "a\x00b", "a b", "a\\b", "x" * 129]
)
def test_unsafe_managed_model_names_are_rejected_at_config_load(name: str) -> None:
    with pytest.raises(ValidationError, match=r"not path-safe|control character"):
        managed(name)
    with pytest.raises(ValidationError, match=r"not path-safe|control character"):
        managed("safe", upstream_model=name)


def test_safe_names_pass_and_static_models_keep_slashes() -> None:
    assert managed("llama-3.1-8b:instruct_v2").served_name == "llama-3.1-8b:instruct_v2"
    # Only the served name names files: a client-facing name may look like a hub id.
    assert managed("org/model", upstream_model="model").name == "org/model"
    static = ModelSettings.model_validate({"name": "org/model", "endpoints": ["http://e"]})
    assert static.name == "org/model"
    with pytest.raises(ValidationError, match="control character"):
        ModelSettings.model_validate({"name": "a\x00b", "endpoints": ["http://e"]})


def test_log_path_never_leaves_the_log_folder(tmp_path: Path) -> None:
    spec = EngineSpec(kind="stub")
    inside = Deployment("m", spec, "unused", "python", tmp_path)
    assert log_path(inside, 1) == tmp_path / "m-1.log"
    for name in ("../m", "a/../../m", "sub/m"):
        with pytest.raises(ValueError, match="escape the log folder"):
            log_path(Deployment(name, spec, "unused", "python", tmp_path), 0)


def test_engines_inherit_only_the_allowlisted_environment() -> None:
    base = {
        "VGATE_AUTH__ADMIN_KEY": "admin-secret", "VGATE_REDIS__URL": "redis://:pw@r:6379",
        "VGATE_ENGINE_VENV": "/venv", "REDIS_URL": "redis://:pw@r", "AWS_SECRET_ACCESS_KEY": "s",
        "HF_TOKEN": "hf_x", "HUGGING_FACE_HUB_TOKEN": "hf_y", "VLLM_API_KEY": "k",
        "DATABASE_PASSWORD": "p", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "PS1": "$ ",
        "PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "HF_HOME": "/hf", "HF_HUB_OFFLINE": "0", "VLLM_LOGGING_LEVEL": "DEBUG",
        "CUDA_HOME": "/cuda", "LD_LIBRARY_PATH": "/lib", "TORCHINDUCTOR_CACHE_DIR": "/c",
        "NCCL_DEBUG": "INFO", "HIP_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "2",
    }  # fmt: skip
    env = build_env(EngineSpec(env={"HF_TOKEN": "given-on-purpose"}), 0, base=base)
    assert not [name for name in env if name.startswith("VGATE_")]
    for name in ("REDIS_URL", "AWS_SECRET_ACCESS_KEY", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY",
                 "DATABASE_PASSWORD", "KUBERNETES_SERVICE_HOST", "PS1"):  # fmt: skip
        assert name not in env, name
    kept = ("PATH", "HOME", "LANG", "LC_ALL", "HF_HOME", "VLLM_LOGGING_LEVEL", "CUDA_HOME",
            "LD_LIBRARY_PATH", "TORCHINDUCTOR_CACHE_DIR", "NCCL_DEBUG", "HIP_VISIBLE_DEVICES",
            "OMP_NUM_THREADS")  # fmt: skip
    assert {name: env[name] for name in kept} == {name: base[name] for name in kept}
    assert env["HF_HUB_OFFLINE"] == "0"  # the operator's choice wins over vgate's default
    assert env["HF_TOKEN"] == "given-on-purpose"  # the spec's own env passes as it is
    assert build_env(EngineSpec(), 0, base={})["PATH"] == os.defpath
    assert not inherited("VGATE_X") and inherited("VLLM_X") and not inherited("HF_API_TOKEN")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_log_files_are_0600_in_a_0700_folder(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "logs" / "m-0.log"
    os.close(open_private_log(fresh))
    assert (mode(fresh.parent), mode(fresh)) == (0o700, 0o600)

    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    (old / "m-0.log").write_text("from an older version\n")
    (old / "m-0.log").chmod(0o644)
    os.close(open_private_log(old / "m-0.log"))
    assert (mode(old), mode(old / "m-0.log")) == (0o700, 0o600)
    assert (old / "m-0.log").read_text() == "from an older version\n"  # appended, not truncated


def test_a_log_file_is_never_opened_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o700)
    (folder / "m-0.log").symlink_to(target)
    with pytest.raises(OSError, match="symbolic link"):
        open_private_log(folder / "m-0.log")
