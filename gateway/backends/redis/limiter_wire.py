"""The rate limiter's script call in RESP form (:mod:`gateway.backends.redis.limiter`
sends it): the script and the two ways to call it, a set of scopes' pieces encoded
once (:func:`encode_scopes`), one operation's arguments (:func:`operation`), and the
reply read back as decisions (:func:`integers`, :func:`read_decision`). Runs on every
request: one format call per operation, one split of the reply per batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from gateway.backends.redis.resp_wire import bulk
from gateway.ratelimit.limits import NEVER, REFUSAL_KINDS, Decision, LimitScope, ScopeState

SCRIPT = resources.files("gateway.backends.redis").joinpath("limiter.lua").read_text("utf-8")
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
EVALSHA = b"$7\r\nEVALSHA\r\n" + bulk(SHA.encode())
EVAL = b"$4\r\nEVAL\r\n" + bulk(SCRIPT.encode())


@dataclass(frozen=True, slots=True)
class EncodedScopes:
    """What every operation on one set of scopes sends, in RESP form, encoded once."""

    keys: bytes  # window and slots key of every scope
    key_count: int
    scopes: int
    admit_head: bytes  # "a", scope count
    settle_head: bytes  # "s", scope count
    renew_head: bytes  # "r", scope count
    limits: bytes  # rpm, tpm, max_concurrent of every scope
    settle_flags: bytes  # a digit per scope: 1 if it has a tpm, plus 2 if a max_concurrent
    decision_size: int  # integers in the reply to one admission
    holds_slots: bool  # some scope has a concurrency limit


def encode_scopes(prefix: str, scopes: Sequence[LimitScope]) -> EncodedScopes:
    """``scopes``' pieces of every script call, under the key ``prefix``."""
    keys, limits, flags = bytearray(), bytearray(), bytearray()
    for scope in scopes:
        base = f"{prefix}{scope.key}".encode()
        keys += bulk(base + b":win") + bulk(base + b":slots")
        for limit in scope.limits.as_args():
            limits += bulk(b"%d" % limit)
        tokens, slots = scope.limits.tpm is not None, scope.limits.max_concurrent is not None
        flags += b"%d" % (tokens + 2 * slots)
    count = bulk(b"%d" % len(scopes))
    return EncodedScopes(
        bytes(keys),
        2 * len(scopes),
        len(scopes),
        bulk(b"a") + count,
        bulk(b"s") + count,
        bulk(b"r") + count,
        bytes(limits),
        bytes(flags),
        5 + 3 * len(scopes),
        any(scope.limits.max_concurrent is not None for scope in scopes),
    )


def operation(head: bytes, request_id: str, w: int, x: int, y: int, z: bytes) -> bytes:
    """One operation's arguments in RESP form: its head (mode, scope count), the request
    id, three integers and a last argument (admit: prompt tokens, wanted, choices, lease
    ms; settle: reserved, actual, admission bucket, settle flags; renew: lease ms, 0, 0,
    0). One format call: this runs on every request."""
    rid = request_id.encode()
    one, two, three = b"%d" % w, b"%d" % x, b"%d" % y
    return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        head, len(rid), rid, len(one), one, len(two), two, len(three), three, len(z), z
    )  # fmt: skip


def integers(reply: object) -> list[int] | None:
    """The integers in the script's reply; None if it is not a string of integers."""
    if not isinstance(reply, bytes):
        return None
    try:
        return [int(value) for value in reply.split()]
    except ValueError:
        return None


def read_decision(reply: list[int], at: int, scopes: int) -> Decision:
    """The decision at ``reply[at:]``: admitted, refusal, retry-after ms, output tokens
    granted per choice, the admission's bucket, then requests, tokens and reset ms per
    scope."""
    if scopes == 1:  # the common case
        states: tuple[ScopeState, ...] = (
            ScopeState(reply[at + 5], reply[at + 6], reply[at + 7] / 1000),
        )
    else:
        states = tuple(
            ScopeState(reply[i], reply[i + 1], reply[i + 2] / 1000)
            for i in range(at + 5, at + 5 + 3 * scopes, 3)
        )
    refused = reply[at + 1]
    if not refused:
        return Decision(True, None, 0.0, states, reply[at + 3], reply[at + 4])
    retry_after = NEVER if reply[at + 2] < 0 else reply[at + 2] / 1000
    return Decision(False, REFUSAL_KINDS[refused - 1], retry_after, states)
