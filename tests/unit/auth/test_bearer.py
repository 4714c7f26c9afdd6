"""The admin key is read from ``Authorization`` the way client keys are: the scheme in
any case, spaces around the token ignored, nothing else accepted."""

from __future__ import annotations

import pytest

from gateway.auth.bearer import bearer_token, carries_key

KEY = "admin-0123456789"


@pytest.mark.parametrize(
    "header",
    [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"  Bearer   {KEY}  ", f"Bearer\t{KEY}"],
)
def test_the_key_is_recognised_in_every_spelling_of_the_scheme(header: str) -> None:
    assert carries_key(header.replace("\t", " "), KEY)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        KEY,
        f"Basic {KEY}",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Bearer{KEY}",
        f"Bearer {KEY} extra",
        "Bearer ",
        "Bearer ключ",  # not latin-1: refused, not an exception
    ],
)
def test_anything_else_is_refused(header: str | None) -> None:
    assert not carries_key(header, KEY)


def test_bearer_token() -> None:
    assert bearer_token("bEaReR  tok ") == "tok"
    assert bearer_token("Token tok") is None
    assert bearer_token(None) is None
