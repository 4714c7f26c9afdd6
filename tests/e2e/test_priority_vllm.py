"""Priority tiers reach real vLLM engines (issue #17, acceptance 3): with tiers on, the
managed engines run with ``--scheduling-policy priority``, and a key's tier arrives as
the request's ``priority``, which the engine takes.

vLLM 0.32 no longer refuses a nonzero ``priority`` under ``fcfs`` (its protocol's
docstring still says it does; the engine ignores the value), so acceptance alone proves
nothing: the engine's command line shows the policy, and the request a high-tier key
sends through a gateway is answered by that engine; that the gateway puts the tier's
number into the body it forwards is shown against the stub engine
(tests/integration/test_priority_tiers.py), which records what it received.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import DEFAULT_MODEL, ENGINE_KEY, Stack, serve_in_front

HIGH_KEY = "sk-e2e-tier-high-0001"


def engine_command_lines(model: str) -> list[list[str]]:
    """The argv of every running vLLM server that serves ``model``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if "--served-model-name" in args and args[args.index("--served-model-name") + 1] == model:
            found.append(args)
    return found


def test_managed_engines_schedule_by_priority(stack: Stack) -> None:
    command_lines = engine_command_lines(DEFAULT_MODEL)
    assert len(command_lines) == 2, command_lines  # the chat model's two replicas
    for argv in command_lines:
        assert argv[argv.index("--scheduling-policy") + 1] == "priority", argv


@pytest.fixture(scope="module")
def tiered_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    auth = {"enabled": True, "keys": [{"name": "chat", "key": HIGH_KEY, "priority": "high"}]}
    yield from serve_in_front(stack, tmp_path_factory.mktemp("tiers"), auth=auth)


def test_the_engine_takes_a_tiers_priority(stack: Stack, tiered_gateway: str) -> None:
    api = openai.OpenAI(base_url=tiered_gateway, api_key=HIGH_KEY, max_retries=0, timeout=120)
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=4,
        temperature=0,
    )
    assert answer.choices[0].message.content
    # The engine itself, asked with that priority, answers too (as it must under the
    # priority policy), and refuses a value that is not an integer, as vLLM does.
    engine = stack.engine_urls(DEFAULT_MODEL)[0]
    headers = {"Authorization": f"Bearer {ENGINE_KEY}"}
    request = {"model": DEFAULT_MODEL, "prompt": "Hi", "max_tokens": 2, "priority": -10}
    assert httpx.post(f"{engine}/v1/completions", json=request, headers=headers,
                      timeout=120).status_code == 200  # fmt: skip
    bad = request | {"priority": "high"}
    refused = httpx.post(f"{engine}/v1/completions", json=bad, headers=headers, timeout=120)
    assert refused.status_code == 400
