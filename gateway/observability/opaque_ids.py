"""Request ids that are unique in a process and say nothing about its traffic.

A counter (``req_<prefix><n>``) let any client count everyone's requests: the
difference between two of its own ids was the number of requests served in
between, and the engine's answer ids (vLLM names an answer after the
``X-Request-Id`` the gateway sends) carried the same count. Here each id is 96
bits of a keyed BLAKE2b over a block counter: a pseudo-random function of a
secret drawn at start-up, so ids neither repeat in practice (a collision takes
about 2**48 ids) nor reveal their order. One hash yields five ids, so an id costs
about what formatting the counter did.
"""

from __future__ import annotations

import hashlib
import os

_ID_HEX = 24
"""Hex characters per id (96 bits)."""
_PER_HASH = 5
"""Ids cut from one 64-byte digest (128 hex characters)."""


class OpaqueIds:
    """``next()``: the next id, ``prefix`` followed by 24 hex characters."""

    __slots__ = ("_block", "_key", "_pending", "_prefix")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._key = os.urandom(32)
        self._block = 0
        self._pending: list[str] = []

    def __reduce__(self) -> tuple[type[OpaqueIds], tuple[str]]:
        """A copy (pickled into a worker process: uvicorn pickles its config, the
        connection limits' refusal ids in it) draws a secret of its own: the same secret
        and counter in every worker gave them all the same ids, in the same order."""
        return (OpaqueIds, (self._prefix,))

    def next(self) -> str:
        pending = self._pending
        if not pending:
            digest = hashlib.blake2b(self._block.to_bytes(8, "little"), key=self._key)
            self._block += 1
            text = digest.hexdigest()
            pending.extend(
                self._prefix + text[i : i + _ID_HEX] for i in range(0, _PER_HASH * _ID_HEX, _ID_HEX)
            )
        return pending.pop()
