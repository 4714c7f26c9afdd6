"""Declarative engine specs: what to launch for a model (data and validation only).

An :class:`EngineSpec` sits under a model's ``engine:`` key in the YAML config.
It says what vLLM should serve and how; :mod:`engines.process` turns it into an
argv and environment. Invalid combinations are rejected when the config loads,
never when an engine is half started. This module imports nothing of ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_SOURCE = "default"
"""``source: default`` means the embedded default chat model (``vgate models prepare``)."""
DEFAULT_EMBEDDINGS_SOURCE = "default-embeddings"
"""``source: default-embeddings`` means the embedded embeddings model (all-MiniLM-L6-v2)."""
EMBEDDED_SOURCES = frozenset({DEFAULT_SOURCE, DEFAULT_EMBEDDINGS_SOURCE})
LOG_MAX_BYTES = 50 * 1024 * 1024
"""A replica's log is rotated before it passes this size (:mod:`engines.engine_log`)."""
LOG_MIN_MAX_BYTES = 64 * 1024
"""Below this a rotation could leave too little of a failed start for its diagnosis."""
LOG_KEEP = 3
"""Rotated log files kept beside the current one."""
# Variables the engine's environment may not set through `env`: vgate sets them.
RESERVED_ENV: Mapping[str, str] = MappingProxyType(
    {"VLLM_API_KEY": "the model's api_key / api_key_env (else a key generated per start)"}
)
_PARSER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

SPECULATIVE_METHODS = frozenset(
    {"ngram", "draft_model", "eagle", "eagle3", "medusa", "mlp_speculator", "mtp", "suffix"}
)
# Flags vgate owns, each with the spec field that sets it: extra_args may not set them in any
# spelling vLLM's parser accepts (see reserved_flag). `--config` loads flags from a file, so
# it could set any of them.
RESERVED_FLAGS: Mapping[str, str] = MappingProxyType(
    {
        "--model": "source",
        "--served-model-name": "the model's name (or upstream_model)",
        "--host": "host",
        "--port": "nothing: vgate picks a free port",
        "--dtype": "dtype",
        "--device": "device",
        "--tensor-parallel-size": "tensor_parallel_size",
        "--quantization": "quantization",
        "--speculative-config": "speculative",
        "--max-model-len": "max_model_len",
        "--max-num-seqs": "max_num_seqs",
        "--gpu-memory-utilization": "gpu_memory_utilization",
        "--enable-prefix-caching": "enable_prefix_caching",
        "--no-enable-prefix-caching": "enable_prefix_caching",
        "--config": "the spec's fields (a config file could set any flag vgate sets)",
        "--api-key": "the model's api_key / api_key_env (else a key generated per start)",
        "--runner": "runner",
        "--enable-lora": "lora_modules",
        "--lora-modules": "lora_modules",
        "--max-lora-rank": "max_lora_rank",
        "--max-loras": "max_loras",
        "--tool-call-parser": "tool_call_parser",
        "--enable-auto-tool-choice": "enable_auto_tool_choice",
        "--reasoning-parser": "reasoning_parser",
        "--chat-template": "chat_template",
        "--scheduling-policy": "scheduling_policy (or the gateway's routing.priority_tiers)",
    }
)
RESERVED_SHORT_FLAGS: Mapping[str, str] = MappingProxyType(
    {"-tp": "--tensor-parallel-size", "-q": "--quantization", "-sc": "--speculative-config"}
)
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def reserved_flag(arg: str) -> str | None:
    """The reserved flag (long form) that ``arg`` would set in vLLM, else None.

    vLLM's parser reads ``--x_y`` as ``--x-y``, ``--x=v`` and ``--x.key v`` (a key of a
    JSON flag) as ``--x``, and argparse takes any unambiguous prefix of a long flag
    (``--served``) and a short flag glued to its value (``-tp2``, ``-qawq``). So an
    argument is reserved when its name, so normalised, is a reserved flag or a prefix
    of one (a prefix that is ambiguous fails in vLLM anyway).
    """
    if len(arg) < 2 or not arg.startswith("-") or _is_number(arg):
        return None
    if arg.startswith("--"):
        name = "--" + re.split(r"[=.]", arg[2:], maxsplit=1)[0].replace("_", "-").lower()
        if name == "--":
            return None
        for flag in RESERVED_FLAGS:
            if flag.startswith(name):
                return flag
        return None
    short = "-" + re.split(r"[=.]", arg[1:], maxsplit=1)[0]
    for flag, long_form in RESERVED_SHORT_FLAGS.items():
        if short.startswith(flag) or flag.startswith(short):
            return long_form
    return None


def check_path_safe_name(name: str, what: str) -> str:
    """``name`` when it may name files and processes: letters, digits, ``.``, ``_``, ``:``,
    ``-``, at most 128, starting with a letter or digit (so never ``..``, an option, a
    ``/`` or a NUL); ValueError naming ``what`` otherwise."""
    if not _NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ValueError(
            f"{what} {name!r} is not path-safe: a managed engine's name names its log file "
            "and registry record, so it must be 1-128 letters, digits, '.', '_', ':' or '-', "
            "start with a letter or digit and hold no '..'"
        )
    return name


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


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
        30.0,
        gt=0,
        description="Period of the stuck probe: a 1-token completion, or for a pooling "
        "engine an embedding (the work the engine serves).",
    )
    probe_timeout_s: float = Field(
        60.0, gt=0, description="A probe slower than this marks the engine stuck."
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="Wait for running requests on stop.")
    stop_timeout_s: float = Field(15.0, gt=0, description="SIGTERM to SIGKILL.")


class LoraModule(_Strict):
    """One LoRA adapter an engine loads at start (vLLM's ``--lora-modules NAME=PATH``).

    Clients name the adapter as a model of its own; it is routed to this model's engines."""

    name: str = Field(description="The model name clients use for the adapter.")
    path: str = Field(min_length=1, description="The adapter's directory (PEFT format).")

    @model_validator(mode="after")
    def _safe(self) -> LoraModule:
        check_path_safe_name(self.name, "lora_modules name")
        if "\0" in self.path or any(ord(char) < 32 for char in self.path):
            raise ValueError(f"lora_modules path of {self.name!r} holds a control character")
        return self


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
    runner: Literal["generate", "pooling"] | None = Field(
        None,
        description="vLLM's --runner: `pooling` for embedding, scoring and classification "
        "models (unset: vLLM decides from the model). Also picks the stuck probe.",
    )
    lora_modules: tuple[LoraModule, ...] = Field(
        (), description="LoRA adapters served next to the model, each under its own name."
    )
    max_lora_rank: int | None = Field(None, ge=1, description="vLLM's --max-lora-rank.")
    max_loras: int | None = Field(None, ge=1, description="vLLM's --max-loras (per batch).")
    tool_call_parser: str | None = Field(
        None, description="vLLM's --tool-call-parser (e.g. hermes): tool_choice required/auto."
    )
    enable_auto_tool_choice: bool = Field(
        False, description="vLLM's --enable-auto-tool-choice (needs tool_call_parser)."
    )
    reasoning_parser: str | None = Field(
        None, description="vLLM's --reasoning-parser (e.g. deepseek_r1, qwen3)."
    )
    chat_template: str | None = Field(
        None, description="vLLM's --chat-template: a Jinja template file on the engine's host."
    )
    scheduling_policy: Literal["fcfs", "priority"] | None = Field(
        None,
        description="vLLM's --scheduling-policy (unset: fcfs, or priority when the gateway's "
        "priority tiers are on: requests then carry their key's tier as vLLM's priority).",
    )
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
        self._check_features()
        for name in self.env:
            if name in RESERVED_ENV:
                raise ValueError(f"env may not set {name}: vgate sets it; use {RESERVED_ENV[name]}")
        for arg in self.extra_args:
            flag = reserved_flag(arg)
            if flag is not None:
                raise ValueError(
                    f"extra_args may not set {flag} (given as {arg!r}): vgate sets it; "
                    f"use {RESERVED_FLAGS[flag]}"
                )
        return self

    def _check_features(self) -> None:
        """LoRA, parsers, template and runner: each needs what makes it meaningful."""
        if not self.lora_modules and (self.max_lora_rank is not None or self.max_loras is not None):
            raise ValueError("max_lora_rank and max_loras need lora_modules")
        names = [module.name for module in self.lora_modules]
        if len(set(names)) != len(names):
            raise ValueError(f"lora_modules names must be distinct, got {names}")
        if self.lora_modules and self.runner == "pooling":
            raise ValueError("lora_modules need a generating model (runner: pooling given)")
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("enable_auto_tool_choice needs tool_call_parser")
        for field in ("tool_call_parser", "reasoning_parser"):
            value = getattr(self, field)
            if value is not None and not _PARSER_PATTERN.fullmatch(value):
                raise ValueError(
                    f"{field} {value!r} is not a parser name (letters, digits, '_', '.', '-')"
                )
        if self.runner == "pooling" and (
            self.tool_call_parser is not None or self.reasoning_parser is not None
        ):
            raise ValueError("tool_call_parser and reasoning_parser need a generating model")
        template = self.chat_template
        if template is not None and (not template.strip() or "\0" in template):
            raise ValueError("chat_template must name a template file")

    def served_adapters(self) -> tuple[str, ...]:
        """The model names of this engine's LoRA adapters."""
        return tuple(module.name for module in self.lora_modules)

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
