"""vLLM's ``cache_salt`` per API key: keys never share the engines' prefix cache.

vLLM's automatic prefix cache is shared by every request an engine serves, and the
gateway sends every key's requests to the same engines (``prefix_affinity`` even
sends a shared prefix to the same one). A request whose prompt starts like one the
engine cached answers its first token sooner, so a tenant timing its answers could
confirm a guess at another tenant's system prompt or documents. vLLM keeps apart the
cache blocks of requests with different ``cache_salt``: with
``cache.engine_prefix_scope: per_key`` (the default) every body the gateway forwards
for a key carries that key's salt (:class:`PrefixSalt`).

The salt is an HMAC of a fixed label under the key's stored digest (the SHA-256 of
its secret, :func:`gateway.auth.keys.digest_of`): the same on every replica and
worker, which share the engines, and computed once per key when its record is
loaded. No tenant sees another key's digest, so none can compute another key's salt
(a key's name alone gives nothing). A client's own ``cache_salt`` never replaces it:
it is hashed onto it (:meth:`PrefixSalt.value_for`), splitting the key's own cache
further, never reaching another's (a salt with a client's part always differs from
every key's plain one).

Cost: a body the gateway forwards as the client's bytes gets the field spliced in
after its opening ``{`` (one copy of the bytes, no re-encoding: the client sent no
``cache_salt``, so the body holds no other); one that holds the client's salt is
re-encoded with the mixed one (:func:`encoded_exactly`: its big integers kept).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.protocol.exact_json import encoded_exactly

FIELD = "cache_salt"
_LABEL = b"vgate engine prefix cache salt v1"
_HEX_CHARS = 32
"""Hex digits kept of each hash (128 bits): a mixed salt (65 characters) stays within
vLLM's 128, in characters it allows (it refuses ``@``, ``/``, ``\\`` and NUL)."""
_BLANKS = b" \t\r\n"
_OPEN = ord("{")
_NOT_FIRST = frozenset(b"} \t\r\n")
"""Bytes after the ``{`` that take the slow path: an empty object, or whitespace."""


class PrefixSalt:
    """One key's ``cache_salt`` and the bytes that splice it into a JSON object."""

    __slots__ = ("_prefix", "value")

    def __init__(self, value: str) -> None:
        self.value = value
        """The salt a body without a ``cache_salt`` of its own gets."""
        self._prefix = b'{"' + FIELD.encode() + b'":' + orjson.dumps(value) + b","

    def __repr__(self) -> str:  # never the salt itself in logs or test output
        return "PrefixSalt(...)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrefixSalt) and hmac.compare_digest(self.value, other.value)

    def __hash__(self) -> int:
        return hash(self.value)

    def value_for(self, body: Mapping[str, Any]) -> str:
        """The salt ``body`` goes to the engines with: the key's, mixed with the
        client's own (any JSON value but null) when it sent one."""
        client = body.get(FIELD)
        if client is None:
            return self.value
        mixed = hashlib.sha256(orjson.dumps(client)).hexdigest()[:_HEX_CHARS]
        return f"{self.value}:{mixed}"

    def onto(self, body: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        """``body`` and ``payload`` (its bytes as the engine would get them) with the
        salt: spliced into the bytes when the client sent none, else re-encoded."""
        salted = body | {FIELD: self.value_for(body)}
        if FIELD not in body:
            return salted, self.spliced(payload)
        return salted, encoded_exactly(salted, payload)

    def sent(self, body: dict[str, Any], payload: bytes) -> bytes:
        """:meth:`onto`'s bytes alone."""
        if FIELD not in body:
            return self.spliced(payload)
        return encoded_exactly(body | {FIELD: self.value_for(body)}, payload)

    def spliced(self, payload: bytes) -> bytes:
        """``payload``, a JSON object holding no ``cache_salt``, with the salt as its
        first field: the bytes after its ``{`` are copied, never parsed."""
        if len(payload) > 1 and payload[0] == _OPEN and payload[1] not in _NOT_FIRST:
            return self._prefix + payload[1:]  # the usual case: ~0.2 µs for 2 KiB
        rest = payload.lstrip(_BLANKS)[1:]  # a JSON object's first byte is "{"
        if rest.lstrip(_BLANKS)[:1] == b"}":  # empty: no comma after the salt
            return self._prefix[:-1] + rest
        return self._prefix + rest


def salt_of(digest: str) -> PrefixSalt:
    """The salt of the key whose stored digest (hex SHA-256 of its secret) is
    ``digest``: the same wherever it is computed, unknowable without the digest."""
    mac = hmac.new(digest.encode("ascii"), _LABEL, hashlib.sha256)
    return PrefixSalt(mac.hexdigest()[:_HEX_CHARS])
