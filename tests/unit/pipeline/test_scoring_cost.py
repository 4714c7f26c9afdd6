"""A scoring request's query is priced once per document it runs with
(:func:`gateway.pipeline.passthrough.repeated_query_chars`)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline.passthrough import (
    RERANK_PAIRS,
    SCORE_PAIRS,
    input_cost,
    input_token_ids,
    repeated_query_chars,
)


@pytest.mark.parametrize(
    ("body", "extra"),
    [
        ({"query": "q" * 10, "documents": ["a", "b", "c"]}, 12 * 2),  # "qqqqqqqqqq": 12 chars
        ({"query": "q" * 10, "documents": ["a"]}, 0),
        ({"query": "q" * 10}, 0),
        ({"query": "q" * 10, "documents": "a"}, 0),
    ],
)
def test_rerank(body: dict[str, Any], extra: int) -> None:
    assert repeated_query_chars(RERANK_PAIRS, body) == extra


@pytest.mark.parametrize(
    ("body", "extra"),
    [
        ({"text_1": "q" * 10, "text_2": ["a", "b", "c"]}, 12 * 2),
        ({"text_1": ["q" * 10], "text_2": ["a", "b", "c"]}, 12 * 2),
        ({"queries": "q" * 10, "documents": ["a"] * 5}, 12 * 4),
        ({"text_1": ["q", "r", "s"], "text_2": ["a", "b", "c"]}, 0),  # one query per pair
        ({"text_1": 5, "text_2": ["a", "b"]}, 1),
    ],
)
def test_score(body: dict[str, Any], extra: int) -> None:
    assert repeated_query_chars(SCORE_PAIRS, body) == extra


@pytest.mark.parametrize(
    ("value", "ids"),
    [([1, 2, 3], 3), ([[1, 2], [3]], 3), (["a", "b"], 0), ("text", 0), ([], 0), (None, 0)],
)
def test_token_ids_in_an_input(value: Any, ids: int) -> None:
    assert input_token_ids(value) == ids


def test_every_token_id_costs_a_token_at_least() -> None:
    payload = b'{"model":"m","input":[' + b",".join([b"1"] * 1000) + b"]}"
    assert input_cost(payload, token_ids=1000).prompt >= 1000
    assert input_cost(b"x" * 400).prompt == 100  # text: 4 characters a token
