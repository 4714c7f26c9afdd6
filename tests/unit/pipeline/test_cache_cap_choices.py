"""The output cap is per choice, an answer's ``usage.completion_tokens`` is for all of
its choices: a completions request with several prompts (one choice each) must hit
the cache under a key with a ``tpm`` as any other request does.

Before, a hit was refused whenever the entry's completion tokens (every choice's)
exceeded the request's per-choice cap, and the entry was then kept from being
replaced: an identical two-prompt request went to the engine every time, never
served from the cache."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.pipeline.plan import COMPLETIONS
from gateway.pipeline.request_meta import RequestMeta
from gateway.pipeline.results import Answer, Replay, Result
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.world import MODEL, World, world

KEY = "sk-choices-0123456789"
DEFAULT_MAX = 4  # ratelimit.default_max_tokens: the cap written when none is asked
PROMPTS = ["one", "two"]


class Engine:
    """One choice per prompt, each stopping at ``max_tokens`` (``length``) as vLLM does."""

    def __call__(self, request: FakeRequest) -> Scripted:
        sent: Any = request.json()
        each = sent["max_tokens"]
        choices = [
            {"index": i, "text": "x" * each, "finish_reason": "length", "logprobs": None}
            for i in range(len(sent["prompt"]))
        ]
        usage = {"prompt_tokens": 2, "completion_tokens": each * len(choices)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": MODEL,
                "choices": choices, "usage": usage}  # fmt: skip
        return Scripted(body=orjson.dumps(body))


def capped_world() -> World:
    return world(
        Engine(),
        auth={"enabled": True, "keys": [{"name": "k", "key": KEY, "tpm": 100_000}]},
        cache={"enabled": True},
        ratelimit={"default_max_tokens": DEFAULT_MAX},
    )


async def ask(w: World, **extra: Any) -> Result:
    body = orjson.dumps({"model": MODEL, "prompt": PROMPTS, "temperature": 0, **extra})
    return await w.service.handle(COMPLETIONS, body, RequestMeta("r", f"Bearer {KEY}", None, None))


@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": 3},  # asked for less than the cap: the body bounds every choice
        {},  # none asked: the gateway writes its cap, which bounds every choice
    ],
)
async def test_a_several_prompt_answer_is_a_hit_under_a_token_limit(extra: dict[str, Any]) -> None:
    w = capped_world()
    first = await ask(w, **extra)
    assert isinstance(first, Answer)
    assert len(orjson.loads(first.body)["choices"]) == len(PROMPTS)
    again = await ask(w, **extra)
    assert isinstance(again, Replay)
    assert len(w.upstream.requests) == 1
