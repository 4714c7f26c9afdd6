"""Review: what an embeddings request reserves of a key's ``tpm`` before it is sent.

vLLM's ``/v1/embeddings`` also takes the chat form (``messages`` instead of
``input``). Priced on ``input`` alone, such a request reserved one token however
long its messages, so many of them at once ran far past a key's ``tpm`` before
any was settled.
"""

from __future__ import annotations

from gateway.pipeline.plan import EMBEDDINGS
from gateway.pipeline.service import prompt_only
from gateway.ratelimit.cost import request_cost

LONG = "word " * 2000  # about 2500 tokens at 4 characters a token


def test_chat_form_embeddings_reserve_their_messages() -> None:
    body: dict[str, object] = {"model": "e", "messages": [{"role": "user", "content": LONG}]}
    assert request_cost(prompt_only(body, EMBEDDINGS), 256).prompt >= len(LONG) // 4


def test_input_form_embeddings_reserve_their_input() -> None:
    body: dict[str, object] = {"model": "e", "input": [LONG, LONG]}
    cost = request_cost(prompt_only(body, EMBEDDINGS), 256)
    assert cost.prompt >= 2 * len(LONG) // 4
    assert cost.wanted == 1
