"""A scoring request's query is priced once per document it runs with
(:func:`gateway.pipeline.passthrough.repeated_query_chars`)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.pipeline.passthrough import RERANK_PAIRS, SCORE_PAIRS, repeated_query_chars


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
