"""The priority spellings keys, admin requests and the client header share."""

from __future__ import annotations

import pytest

from gateway.config.priority import PRIORITY_MAX, PRIORITY_MIN, lowered, parse_priority, tier_name


@pytest.mark.parametrize(
    ("value", "expected"),
    [("high", -10), ("Normal", 0), (" LOW ", 10), (7, 7), ("-3", -3), (" 12 ", 12)],
)
def test_names_and_integers_parse_to_vllm_priorities(value: object, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize(
    "value",
    [True, False, 1.5, None, "", "urgent", "1e3", "0x10", "9" * 40, PRIORITY_MAX + 1,
     PRIORITY_MIN - 1, [1]],
)  # fmt: skip
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="priority"):
        parse_priority(value)


def test_a_client_may_lower_its_priority_but_never_raise_it() -> None:
    assert lowered(0, None) == 0
    assert lowered(0, 10) == 10  # later: allowed
    assert lowered(0, -10) == 0  # earlier: clamped to what the key was granted
    assert lowered(-10, 0) == 0


def test_named_tiers_show_their_names() -> None:
    assert [tier_name(p) for p in (-10, 0, 10, 5)] == ["high", "normal", "low", None]


@pytest.mark.parametrize("value", ["\uff11\uff10", "\u0663", "1_0", "-1_0", "\uff11"])
def test_only_ascii_digits_spell_a_number(value: str) -> None:
    """Python's ``int`` reads full-width and other Unicode digits and ``_`` separators;
    a priority (key records, /admin/keys, the config, the header) does not."""
    with pytest.raises(ValueError, match="priority"):
        parse_priority(value)
