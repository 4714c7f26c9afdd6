"""A canary rollout through ``vgate up`` on real vLLM (issue #17, acceptance 4): the
default chat model in float32 as the stable variant, its AWQ checkpoint as the canary,
both behind one name clients use.

The AWQ engine needs vLLM's W4A16 CPU kernel, which runs in bfloat16 only: on a
machine without bf16 this module is skipped like tests/e2e/test_awq.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from engines.models.prepare import prepare_default_model
from engines.models.quantize import quantize_awq
from gateway.cli.stack import default_models
from tests.helpers.processes import free_port, run_process

pytestmark = [pytest.mark.e2e, pytest.mark.bf16_cpu]

ROLLOUT = "smollm2"
AWQ_MODEL = "smollm2-135m-awq"
STARTUP_TIMEOUT_S = 1500
REPO_ROOT = Path(__file__).resolve().parents[2]
PARIS: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the capital of France?"}
]


class Canary:
    def __init__(self, url: str, admin_url: str, stable: str) -> None:
        self.url = url
        self.admin_url = admin_url
        self.stable = stable


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Canary]:
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "install_quant.sh")], check=True)
    awq_dir = quantize_awq(prepare_default_model())
    directory = tmp_path_factory.mktemp("rollout-awq")
    chat = default_models()[0].model_dump(mode="json", exclude_defaults=True)
    chat["engine"] |= {"health": {"startup_timeout_s": 1200, "probe_timeout_s": 120}}
    awq = {
        "name": AWQ_MODEL,
        "engine": {
            "source": str(awq_dir),
            "dtype": "bfloat16",  # vLLM's CPU kernel for W4A16 has no float32 variant
            "max_model_len": 2048,
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
            "health": {"startup_timeout_s": 1200, "probe_timeout_s": 120},
        },
    }
    config = {
        "engines": {"log_dir": str(directory / "logs")},
        "upstream": {"health_interval_s": 1},
        "models": [chat, awq],
        "rollouts": [
            {
                "model": ROLLOUT,
                # Even weights: both variants answer within a few requests.
                "variants": [
                    {"model": chat["name"], "weight": 50},
                    {"model": AWQ_MODEL, "weight": 50, "canary": True},
                ],
                "sticky": "user",
            }
        ],
    }
    path = directory / "vgate.yaml"
    path.write_text(yaml.safe_dump(config))
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "gateway", "up", "--config", str(path), "--port", str(port),
            "--admin-port", str(admin)]  # fmt: skip
    url, admin_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}"
    with run_process(argv, f"{url}/ready", timeout=STARTUP_TIMEOUT_S):
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:  # /ready answers once one engine is up: wait for both variants
            engines = httpx.get(f"{admin_url}/ready", timeout=30).json()["engines"]
            if all(sum(engines.get(m, {}).values()) for m in (chat["name"], AWQ_MODEL)):
                break
            assert time.monotonic() < deadline, f"engines not ready: {engines}"
            time.sleep(1)
        yield Canary(url, admin_url, chat["name"])


def test_both_variants_answer_under_the_rollouts_name(canary: Canary) -> None:
    client = openai.OpenAI(base_url=f"{canary.url}/v1", api_key="unused", max_retries=0)
    assert ROLLOUT in {m.id for m in client.models.list()}
    seen: Counter[str] = Counter()
    for n in range(24):
        raw = client.chat.completions.with_raw_response.create(
            model=ROLLOUT, messages=PARIS, temperature=0, max_tokens=24, user=f"user-{n}"
        )
        answer = raw.parse()
        assert answer.model == ROLLOUT
        assert "Paris" in (answer.choices[0].message.content or "")
        seen[raw.headers["x-vgate-variant"]] += 1
    assert set(seen) == {canary.stable, AWQ_MODEL}, seen


def test_a_user_stays_on_one_variant_and_streams_carry_it(canary: Canary) -> None:
    client = openai.OpenAI(base_url=f"{canary.url}/v1", api_key="unused", max_retries=0)
    variants = set()
    for _ in range(3):
        with client.chat.completions.with_streaming_response.create(
            model=ROLLOUT, messages=PARIS, temperature=0, max_tokens=24, stream=True, user="ada"
        ) as streamed:
            variants.add(streamed.headers["x-vgate-variant"])
            text = "".join(c.choices[0].delta.content or "" for c in streamed.parse() if c.choices)
        assert "Paris" in text
    assert len(variants) == 1


def test_metrics_split_by_variant(canary: Canary) -> None:
    metrics = httpx.get(f"{canary.admin_url}/metrics", timeout=30).text
    lines = [line for line in metrics.splitlines() if line.startswith("vgate_requests_total{")]
    for variant in (canary.stable, AWQ_MODEL):  # labels in any order (the exposition sorts them)
        wanted = (f'model="{ROLLOUT}"', 'endpoint="chat_completions"', 'status="200"',
                  f'variant="{variant}"')  # fmt: skip
        assert any(all(label in line for label in wanted) for line in lines), (variant, lines)
