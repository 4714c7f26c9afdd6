"""Runner, LoRA adapters, tool/reasoning parsers and chat template: argv and validation."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from pydantic import ValidationError

from engines.process import build_argv, build_env
from engines.spec import RESERVED_FLAGS, EngineSpec


def argv_of(**fields: Any) -> tuple[str, ...]:
    spec = EngineSpec.model_validate(fields)
    return build_argv(spec, "/venv/bin/python", "/models/m", "served", 8123)


def values_after(argv: tuple[str, ...], name: str, count: int = 1) -> list[str]:
    start = argv.index(name) + 1
    return list(argv[start : start + count])


def test_no_feature_flags_by_default() -> None:
    argv = argv_of()
    for flag in ("--runner", "--enable-lora", "--lora-modules", "--tool-call-parser",
                 "--enable-auto-tool-choice", "--reasoning-parser", "--chat-template",
                 "--api-key"):  # fmt: skip
        assert flag not in argv


def test_lora_parsers_template_and_runner_become_vllm_flags() -> None:
    argv = argv_of(
        lora_modules=[{"name": "sql", "path": "/adapters/sql"}, {"name": "chat-2", "path": "/a/b"}],
        max_lora_rank=16,
        max_loras=2,
        tool_call_parser="hermes",
        enable_auto_tool_choice=True,
        reasoning_parser="deepseek_r1",
        chat_template="/templates/tools.jinja",
        runner="generate",
    )
    assert "--enable-lora" in argv
    assert values_after(argv, "--lora-modules", 2) == ["sql=/adapters/sql", "chat-2=/a/b"]
    assert values_after(argv, "--max-lora-rank") == ["16"]
    assert values_after(argv, "--max-loras") == ["2"]
    assert values_after(argv, "--tool-call-parser") == ["hermes"]
    assert "--enable-auto-tool-choice" in argv
    assert values_after(argv, "--reasoning-parser") == ["deepseek_r1"]
    assert values_after(argv, "--chat-template") == ["/templates/tools.jinja"]
    assert values_after(argv, "--runner") == ["generate"]


def test_pooling_runner() -> None:
    assert values_after(argv_of(runner="pooling", dtype="float32"), "--runner") == ["pooling"]


def test_stub_serves_adapters_and_runner() -> None:
    spec = EngineSpec(kind="stub", lora_modules=[{"name": "ad", "path": "/x"}])
    argv = build_argv(spec, "unused", "unused", "served", 9000)
    assert argv[0] == sys.executable
    assert values_after(argv, "--model") == ["served"]
    assert values_after(argv, "--lora") == ["ad=served"]  # listed with its parent
    pooling = build_argv(EngineSpec(kind="stub", runner="pooling"), "u", "u", "emb", 9000)
    assert values_after(pooling, "--runner") == ["pooling"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_lora_rank": 8}, "need lora_modules"),
        ({"max_loras": 2}, "need lora_modules"),
        ({"enable_auto_tool_choice": True}, "needs tool_call_parser"),
        ({"lora_modules": [{"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}]}, "distinct"),
        ({"lora_modules": [{"name": "../up", "path": "/x"}]}, "not path-safe"),
        ({"lora_modules": [{"name": "-rf", "path": "/x"}]}, "not path-safe"),
        ({"lora_modules": [{"name": "a", "path": ""}]}, "at least 1"),
        ({"lora_modules": [{"name": "a", "path": "/x\n--api-key k"}]}, "control character"),
        ({"lora_modules": [{"name": "a", "path": "/x"}], "runner": "pooling"}, "generating"),
        ({"runner": "pooling", "tool_call_parser": "hermes"}, "generating"),
        ({"tool_call_parser": "--enable-lora"}, "not a parser name"),
        ({"reasoning_parser": "a b"}, "not a parser name"),
        ({"chat_template": "  "}, "template file"),
        ({"runner": "draft"}, "runner"),
        ({"env": {"VLLM_API_KEY": "x"}}, "VLLM_API_KEY"),
    ],
)
def test_inconsistent_specs_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EngineSpec.model_validate(fields)


@pytest.mark.parametrize(
    "arg",
    [
        "--api-key=k", "--api_key", "--runner", "--enable-lora", "--lora-modules",
        "--max-lora-rank=8", "--max-loras", "--tool-call-parser", "--enable-auto-tool-choice",
        "--reasoning-parser=qwen3", "--chat-template", "--chat_template=/t.jinja",
    ],
)  # fmt: skip
def test_extra_args_cannot_set_owned_flags(arg: str) -> None:
    with pytest.raises(ValidationError, match="extra_args may not set"):
        EngineSpec(extra_args=(arg, "v"))


def test_every_new_flag_is_reserved_and_neighbours_are_not() -> None:
    for flag in ("--api-key", "--runner", "--enable-lora", "--lora-modules", "--max-lora-rank",
                 "--max-loras", "--tool-call-parser", "--enable-auto-tool-choice",
                 "--reasoning-parser", "--chat-template"):  # fmt: skip
        assert flag in RESERVED_FLAGS
    # Flags that only share a beginning with an owned one stay free.
    free = ("--chat-template-content-format", "openai", "--tool-parser-plugin", "/p.py",
            "--lora-dtype", "float32", "--max-cpu-loras", "4")  # fmt: skip
    spec = EngineSpec(extra_args=free)
    assert "--chat-template-content-format" in spec.extra_args


def test_spec_env_cannot_smuggle_the_engine_key() -> None:
    env = build_env(EngineSpec(env={"OTHER": "1"}), 0, base={"VLLM_API_KEY": "outer"})
    assert "VLLM_API_KEY" not in env  # a credential is never inherited from vgate
