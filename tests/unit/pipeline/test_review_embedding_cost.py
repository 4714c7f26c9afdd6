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


def test_token_id_inputs_reserve_one_token_per_id() -> None:
    """Bug hunt check of ``input``: token ids count one each, every input one output."""
    ids: dict[str, object] = {"model": "e", "input": list(range(3000))}
    one = request_cost(prompt_only(ids, EMBEDDINGS), 256)
    assert (one.prompt, one.wanted, one.choices) == (3000, 1, 1)
    many: dict[str, object] = {"model": "e", "input": [list(range(1000)), list(range(500))]}
    cost = request_cost(prompt_only(many, EMBEDDINGS), 256)
    assert (cost.prompt, cost.choices) == (1500, 2)


def test_chat_form_embeddings_reserve_their_images() -> None:
    """A non-text part of an embeddings chat message (an image: multimodal embedding
    models) is priced as chat prices it."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 4096}}
    text_only: dict[str, object] = {
        "model": "e",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
    }
    with_image: dict[str, object] = {
        "model": "e",
        "messages": [{"role": "user", "content": [image]}],
    }
    base = request_cost(prompt_only(text_only, EMBEDDINGS), 256).prompt
    assert request_cost(prompt_only(with_image, EMBEDDINGS), 256).prompt >= base + 1024


def test_fields_vllm_never_embeds_are_not_reserved() -> None:
    """vLLM's embeddings render ``input`` or ``messages`` only (``tools=None``, no
    ``documents``, no ``prompt_embeds``, no ``prompt``): the same fields on an embeddings
    body reach nothing the model reads, so they reserve nothing."""
    plain: dict[str, object] = {"model": "e", "input": "x"}
    extra = plain | {
        "tools": [{"type": "function", "function": {"name": "f" * 4000}}],
        "documents": [{"text": "d" * 4000}],
        "prompt_embeds": "A" * 40_000,
        "prompt": "p" * 4000,
    }
    assert request_cost(prompt_only(extra, EMBEDDINGS), 256) == request_cost(
        prompt_only(plain, EMBEDDINGS), 256
    )
