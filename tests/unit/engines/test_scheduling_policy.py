"""Managed engines schedule by priority when the gateway's tiers reach them: the spec's
``scheduling_policy`` becomes vLLM's flag, and the deployments fill it in when tiers are
on (explicitly, or because a configured key has a tier)."""

from __future__ import annotations

from typing import Any

import pytest

from engines.process import build_argv
from engines.spec import EngineSpec
from gateway.config.settings import Settings
from gateway.pool.sources import build_deployments


def policy_flag(argv: tuple[str, ...]) -> str | None:
    return argv[argv.index("--scheduling-policy") + 1] if "--scheduling-policy" in argv else None


def test_the_spec_becomes_vllms_flag_and_the_stubs() -> None:
    vllm = EngineSpec(scheduling_policy="priority")
    assert policy_flag(build_argv(vllm, "/py", "/models/m", "m", 9000)) == "priority"
    assert policy_flag(build_argv(EngineSpec(), "/py", "/models/m", "m", 9000)) is None
    stub = EngineSpec(kind="stub", scheduling_policy="priority")
    assert policy_flag(build_argv(stub, "/py", "u", "m", 9000)) == "priority"


def test_extra_args_may_not_set_it() -> None:
    with pytest.raises(ValueError, match="scheduling_policy"):
        EngineSpec(extra_args=("--scheduling-policy=priority",))


def settings(**sections: Any) -> Settings:
    model = {"name": "m", "engine": {"kind": "stub"}}
    return Settings.model_validate({"models": [model], **sections})


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({}, None),
        ({"routing": {"priority_tiers": True}}, "priority"),
        ({"auth": {"enabled": True, "keys": [{"name": "k", "key": "sk-12345678"}]}}, None),
        (
            {"auth": {"enabled": True, "keys": [{"name": "k", "key": "sk-12345678",
                                                 "priority": "high"}]}},
            "priority",
        ),
        (
            {"routing": {"priority_tiers": False},
             "auth": {"enabled": True, "keys": [{"name": "k", "key": "sk-12345678",
                                                 "priority": "low"}]}},
            None,
        ),
    ],
)  # fmt: skip
def test_tiers_turn_priority_scheduling_on(sections: dict[str, Any], expected: str | None) -> None:
    (deployment,) = build_deployments(settings(**sections))
    assert deployment.spec.scheduling_policy == expected
