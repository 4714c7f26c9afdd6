"""Declarative engine specs: what to launch for a model (data and validation only).

An :class:`EngineSpec` sits under a model's ``engine:`` key in the YAML config.
It says what vLLM should serve and how; :mod:`engines.process` turns it into an
argv and environment. Invalid combinations are rejected when the config loads,
never when an engine is half started. This module imports nothing of ours.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SOURCE = "default"
"""``source: default`` means the embedded default model (``vgate models prepare``)."""

SPECULATIVE_METHODS = frozenset(
    {"ngram", "draft_model", "eagle", "eagle3", "medusa", "mlp_speculator", "mtp", "suffix"}
)
# Flags vgate owns: the supervisor sets them, so extra_args must not.
RESERVED_FLAGS = frozenset(
    {"--model", "--port", "--host", "--served-model-name", "--tensor-parallel-size",
     "--speculative-config", "--quantization", "--dtype", "--device"}
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RestartPolicy(_Strict):
    """Exponential backoff between restarts, and a budget of restarts per window."""

    max_restarts: int = Field(5, ge=0, description="Restarts allowed within `window_s`.")
    window_s: float = Field(600.0, gt=0)
    backoff_initial_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)

    def backoff(self, attempt: int) -> float:
        """Delay before restart number ``attempt`` (1-based): 1, 2, 4, ... capped."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** max(0, attempt - 1)))


class HealthPolicy(_Strict):
    """How the supervisor decides an engine is alive, ready, stuck or drained."""

    startup_timeout_s: float = Field(900.0, gt=0, description="Spawn to ready, at most.")
    interval_s: float = Field(2.0, gt=0, description="Process and /health check period.")
    probe_interval_s: float = Field(
        30.0, gt=0, description="Period of the 1-token completion probe (stuck detection)."
    )
    probe_timeout_s: float = Field(
        60.0, gt=0, description="A probe slower than this marks the engine stuck."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="Wait for running requests on stop.")
    stop_timeout_s: float = Field(15.0, gt=0, description="SIGTERM to SIGKILL.")


class EngineSpec(_Strict):
    """One model's vLLM engines. Field names follow vLLM's flags where one exists."""

    kind: Literal["vllm", "stub"] = Field(
        "vllm", description="`stub` runs the deterministic fake engine (tests, client work)."
    )
    source: str = Field(
        DEFAULT_SOURCE,
        description="Model directory or an id already in the local Hugging Face cache; "
        "`default` is the embedded SmolLM2-135M-Instruct.",
    )
    replicas: int = Field(1, ge=1, le=64)
    device: Literal["cpu", "cuda"] = "cpu"
    gpu_ids: tuple[tuple[int, ...], ...] | None = Field(
        None, description="Per replica, the GPUs it may use (CUDA_VISIBLE_DEVICES)."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_model_len: int | None = Field(None, ge=16)
    max_num_seqs: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    quantization: str | None = Field(None, description="e.g. awq, gptq, compressed-tensors")
    speculative: dict[str, Any] | None = Field(
        None, description="vLLM's --speculative-config, e.g. {method: ngram, ...}"
    )
    enable_prefix_caching: bool | None = None
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    python: str | None = Field(
        None, description="Interpreter with vLLM installed (default: the engine venv)."
    )
    host: str = "127.0.0.1"
    restart: RestartPolicy = RestartPolicy()
    health: HealthPolicy = HealthPolicy()

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        if self.device == "cpu":
            if self.gpu_ids is not None:
                raise ValueError("gpu_ids is only valid with device: cuda")
            if self.gpu_memory_utilization is not None:
                raise ValueError("gpu_memory_utilization is only valid with device: cuda")
            if self.tensor_parallel_size != 1:
                raise ValueError("tensor_parallel_size > 1 needs device: cuda")
        if self.gpu_ids is not None:
            if len(self.gpu_ids) != self.replicas:
                raise ValueError(
                    f"gpu_ids has {len(self.gpu_ids)} entries for {self.replicas} replicas"
                )
            for ids in self.gpu_ids:
                if len(ids) != self.tensor_parallel_size:
                    raise ValueError(
                        f"each gpu_ids entry needs tensor_parallel_size="
                        f"{self.tensor_parallel_size} GPUs, got {list(ids)}"
                    )
        if self.speculative is not None:
            _check_speculative(self.speculative)
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in RESERVED_FLAGS:
                raise ValueError(f"extra_args may not set {flag}: vgate sets it from the spec")
        return self

    def replica_gpus(self, replica: int) -> tuple[int, ...] | None:
        """GPUs for one replica: as configured, else consecutive blocks of TP size."""
        if self.device != "cuda":
            return None
        if self.gpu_ids is not None:
            return self.gpu_ids[replica]
        size = self.tensor_parallel_size
        return tuple(range(replica * size, (replica + 1) * size))


def _check_speculative(config: dict[str, Any]) -> None:
    method = config.get("method")
    if method not in SPECULATIVE_METHODS:
        raise ValueError(
            f"speculative.method must be one of {sorted(SPECULATIVE_METHODS)}, got {method!r}"
        )
    tokens = config.get("num_speculative_tokens")
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError("speculative.num_speculative_tokens must be a positive integer")
    if method in {"draft_model", "eagle", "eagle3", "medusa", "mlp_speculator"} and not config.get(
        "model"
    ):
        raise ValueError(f"speculative method {method} needs a draft `model`")
