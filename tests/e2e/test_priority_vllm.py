"""Priority tiers reach real vLLM engines (issue #17, acceptance 3): with tiers on, the
managed engines run with ``--scheduling-policy priority``, and a key's tier arrives as
the request's ``priority``, which the engine takes.

vLLM 0.32 no longer refuses a nonzero ``priority`` under ``fcfs`` (its protocol's
docstring still says it does; the engine ignores the value), so acceptance alone proves
nothing: the engine's command line shows the policy, and a recording proxy between a
gateway and a real engine shows the body the engine received carries the tier's
``priority`` on every request, which the engine answered.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.e2e.conftest import DEFAULT_MODEL, ENGINE_KEY, Stack, serve_in_front
from tests.helpers.processes import free_port, run_process
from tests.helpers.recording_proxy import recording_proxy

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


def test_every_request_reaches_the_engine_with_its_tiers_priority(
    stack: Stack, tmp_path: Path
) -> None:
    """A gateway whose one endpoint is a recording proxy in front of a real engine: each
    request of a high-tier key and of a low-tier one arrives at vLLM with its tier's
    ``priority`` (-10, 10) and is answered."""
    engine = stack.engine_urls(DEFAULT_MODEL)[0]
    keys = [
        {"name": "fast", "key": HIGH_KEY, "priority": "high"},
        {"name": "batch", "key": "sk-e2e-tier-low-0001", "priority": "low"},
    ]
    with recording_proxy(engine) as proxy:
        config = {
            "models": [{"name": DEFAULT_MODEL, "endpoints": [proxy.url], "api_key": ENGINE_KEY}],
            "auth": {"enabled": True, "keys": keys},
        }
        path = tmp_path / "vgate.yaml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                "--port", str(port)]  # fmt: skip
        with run_process(argv, f"http://127.0.0.1:{port}/ready", timeout=60):
            for key, tier in ((HIGH_KEY, -10), ("sk-e2e-tier-low-0001", 10)):
                api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                    max_retries=0, timeout=120)  # fmt: skip
                for _ in range(2):
                    before = len(proxy.bodies)
                    answer = api.chat.completions.create(
                        model=DEFAULT_MODEL,
                        messages=[{"role": "user", "content": "Say hi."}],
                        max_tokens=2,
                    )
                    assert answer.choices[0].message.content is not None
                    sent = [
                        b for b in proxy.bodies[before:] if isinstance(b, dict) and "messages" in b
                    ]
                    assert [b.get("priority") for b in sent] == [tier], sent
