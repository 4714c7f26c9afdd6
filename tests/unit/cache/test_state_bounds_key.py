"""What a cacheable body's key costs on the event loop is bounded, however long its lists.

Normalising numbers through lists walked every item in Python: a prompt of 7 million
token ids with ``temperature: 0`` (a 14 MB body, under every limit) held a worker's
event loop for most of a second per request (/health went from ~40 ms to ~850 ms).
"""

from __future__ import annotations

from typing import Any

from gateway.cache.key import NORMALISED_ITEMS, _number_normalised, cache_key

BASE: dict[str, Any] = {"model": "m", "temperature": 0}


def key(body: dict[str, Any]) -> str:
    return cache_key("v1", "k", "completions", "m", "fp", body)


def test_a_long_list_is_not_walked() -> None:
    ids = [1] * 1_000_000
    left = [NORMALISED_ITEMS]
    assert _number_normalised(ids, left) is ids
    assert left == [NORMALISED_ITEMS]


def test_nested_lists_share_one_allowance() -> None:
    inner = [[1.0] * 64 for _ in range(64)]  # 4,096 + 64 items: more than the allowance
    tree = [inner, [list(row) for row in inner]]
    left = [NORMALISED_ITEMS]
    walked = _number_normalised(tree, left)
    assert 0 <= left[0] < 64
    rows = [row for half in walked for row in half]
    assert any(row is not original for row, original in zip(rows[:64], inner, strict=True))
    assert rows[-1] is tree[1][-1]  # past the allowance: kept as written, unwalked


def test_long_lists_key_as_written_short_ones_as_numbers() -> None:
    long_floats = {"prompt": [1.0] * (NORMALISED_ITEMS + 1)}
    long_ints = {"prompt": [1] * (NORMALISED_ITEMS + 1)}
    assert key(BASE | long_floats) == key(BASE | long_floats)  # the same body, one key
    assert key(BASE | long_floats) != key(BASE | long_ints)  # a miss, never a collision
    assert key(BASE | {"prompt": [[1.0, 2.0]] * 100}) == key(BASE | {"prompt": [[1, 2]] * 100})
