"""``Authorization: Bearer <token>``, read one way everywhere the admin key is checked.

The scheme is matched in any case (RFC 9110 §11.1: auth schemes are
case-insensitive) and spaces around the token are ignored, as client keys are read
(:mod:`gateway.auth.authenticator`); the comparison takes the same time whatever the
presented token shares with the expected one.
"""

from __future__ import annotations

import hmac


def bearer_token(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>``; None for a missing header or another scheme."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def carries_key(authorization: str | None, expected: str) -> bool:
    """Whether ``authorization`` is ``Bearer <expected>`` (constant-time comparison)."""
    token = bearer_token(authorization)
    if token is None:
        return False
    try:
        given = token.encode("latin-1")  # header values arrive as latin-1
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, expected.encode())
