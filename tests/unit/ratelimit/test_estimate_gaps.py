"""Gaps between what a key's ``tpm`` is charged at admission and what it can send.

* ``server.max_prompt_chars`` counted message contents and prompts only, while the
  estimate prices every field the chat template renders (an assistant's
  ``reasoning``, ``name``, ``tool_call_id``, ``tools``, ``chat_template_kwargs``): a
  request carried unbounded text there past the cap. It now counts, by the same walk,
  exactly what the estimate prices.
* An embeddings request of many short strings was priced by their text alone: the
  engine frames each with its special tokens (an encoder's CLS and SEP), so 10,000
  one-letter inputs reserved 12,500 tokens (text and one token each) and counted
  30,000. Token-id inputs were and are priced exactly (one per id).
* Responses settlements did not teach the key's calibration: ``/v1/responses`` was
  charged the raw estimate at every admission however its text tokenized.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config.settings import Settings
from gateway.errors import InvalidRequestError
from gateway.pipeline.assembly import routing_table
from gateway.pipeline.plan import CHAT, COMPLETIONS, EMBEDDINGS, BodyLimits, RequestPlanner, Route
from gateway.pipeline.results import Answer, EventStream
from gateway.pipeline.service import prompt_only
from gateway.pool.engine_pool import EnginePool
from gateway.ratelimit.cost import priced_text_chars, request_cost
from gateway.upstream.fake import FakeRequest, Scripted
from tests.unit.pipeline.responses_world import KEY, responses_world
from tests.unit.pipeline.world import drain

CAP = 1000
BIG = "r" * (CAP + 1)


def planner(cap: int = CAP) -> RequestPlanner:
    settings = Settings.model_validate({"models": [{"name": "m", "endpoints": ["http://e"]}]})
    return RequestPlanner(
        {m.name: m for m in settings.models},
        EnginePool({"m": ("http://e",)}),
        routing_table(settings),
        BodyLimits(max_prompt_chars=cap),
    )


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": list(messages), **fields}


USER = {"role": "user", "content": "hi"}
OVER_THE_CAP = {
    "reasoning": chat(USER, {"role": "assistant", "content": "ok", "reasoning": BIG}),
    "reasoning_content": chat(
        USER, {"role": "assistant", "content": "ok", "reasoning_content": BIG}
    ),
    "name": chat({"role": "user", "content": "hi", "name": BIG}),
    "tool_call_id": chat({"role": "tool", "content": "1", "tool_call_id": BIG}),
    "tool_calls": chat(
        USER,
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "type": "function", "function": {"arguments": BIG}}],
        },
    ),
    "tools": chat(USER, tools=[{"type": "function", "function": {"name": "f", "x": BIG}}]),
    "documents": chat(USER, documents=[{"text": BIG}]),
    "chat_template_kwargs": chat(USER, chat_template_kwargs={"tools": [BIG]}),
}


@pytest.mark.parametrize("body", OVER_THE_CAP.values(), ids=OVER_THE_CAP.keys())
def test_every_field_the_estimate_prices_counts_against_max_prompt_chars(
    body: dict[str, Any],
) -> None:
    with pytest.raises(InvalidRequestError, match=f"request text exceeds {CAP} characters"):
        planner().parse(CHAT, orjson.dumps(body), None)
    # The same body passes a cap of exactly what the estimate priced as text.
    priced = priced_text_chars(body)
    assert priced > CAP
    assert planner(priced).parse(CHAT, orjson.dumps(body), None).body == body


@pytest.mark.parametrize(
    ("route", "body"),
    [
        (CHAT, chat({"role": "user", "content": [{"type": "text", "text": BIG}]})),
        (COMPLETIONS, {"model": "m", "prompt": ["a", BIG]}),
        (EMBEDDINGS, {"model": "m", "input": [BIG]}),
        (EMBEDDINGS, {"model": "m", "messages": [{"role": "user", "content": BIG}]}),
    ],
    ids=["chat-parts", "completions-list", "embeddings-input", "embeddings-messages"],
)
def test_text_and_prompts_still_count(route: Route, body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError, match="request text exceeds") as refused:
        planner().parse(route, orjson.dumps(body), None)
    assert refused.value.param == ("messages" if "messages" in body else route.prompt_field)


def test_what_the_estimate_does_not_price_does_not_count() -> None:
    """An image's payload, token ids, and the fields an embeddings request never puts in
    front of the model are bounded by ``server.max_body_bytes``, not the text cap."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + BIG}}
    cases: list[tuple[Route, dict[str, Any]]] = [
        (CHAT, chat({"role": "user", "content": [image]})),
        (COMPLETIONS, {"model": "m", "prompt": list(range(CAP + 1))}),
        (EMBEDDINGS, {"model": "m", "input": "x", "tools": [{"type": "function", "x": BIG}]}),
    ]
    for route, body in cases:
        assert len(orjson.dumps(body)) > CAP
        assert planner().parse(route, orjson.dumps(body), None).body == body


def test_many_short_embedding_inputs_reserve_what_an_encoder_counts() -> None:
    """An encoder counts each input with its CLS and SEP: 3 tokens for one letter."""
    inputs = 10_000
    for short in ("a", ""):
        body: dict[str, Any] = {"model": "e", "input": [short] * inputs}
        cost = request_cost(prompt_only(body, EMBEDDINGS), 256)
        assert cost.most >= inputs * (len(short) + 2)  # reserved: the prompt, a token each
    ids: dict[str, Any] = {"model": "e", "input": [[7]] * inputs}  # priced exactly
    assert request_cost(prompt_only(ids, EMBEDDINGS), 256).prompt == inputs
    one: dict[str, Any] = {"model": "e", "input": "abcd" * 10}  # as it always was
    assert request_cost(prompt_only(one, EMBEDDINGS), 256).prompt == 10


@pytest.mark.parametrize("counted", [True, False], ids=["input-tokens", "total-only"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_responses_settlement_teaches_the_keys_calibration(
    stream: bool, counted: bool
) -> None:
    text = "a" * 4000  # estimated at (4000 + 16) / 4 = 1004 tokens

    def crafted_count(request: FakeRequest) -> Scripted:
        body = request.json()
        assert isinstance(body, dict)
        usage: dict[str, int] = {"output_tokens": 1, "total_tokens": 4001}
        if counted:
            usage["input_tokens"] = 4000  # a token a character
        response = {"id": body["request_id"], "object": "response", "status": "completed"}
        response |= {"output": [], "usage": usage}
        if not stream:
            return Scripted(body=orjson.dumps(response))
        event = {"type": "response.completed", "sequence_number": 0, "response": response}
        return Scripted(
            events=[b"event: response.completed\ndata: " + orjson.dumps(event) + b"\n\n"]
        )

    world = responses_world(key_limits={"tpm": 100_000})
    world.upstream.handler = crafted_count
    principal = await world.service.caller(f"Bearer {KEY}")
    raw = orjson.dumps({"model": "m", "input": text, "store": False, "stream": stream})
    result = await world.service.create(raw, principal, "req-1", None)
    if isinstance(result, EventStream):
        assert b"response.completed" in await drain(result)
    else:
        assert isinstance(result, Answer)
        assert orjson.loads(result.body)["usage"]["total_tokens"] == 4001
    priced = {"messages": [{"content": text}]}
    following = await world.admission.admit(principal.scopes("m"), priced)
    assert following.estimate == 1004
    if counted:
        assert following.prompt >= 3990  # what the engine will count, about
    else:  # no count of the prompt to learn from: nothing learned
        assert following.prompt == 1004
    following.settle(0)
