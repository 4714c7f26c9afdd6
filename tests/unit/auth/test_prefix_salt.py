"""Each key's vLLM ``cache_salt``: the same for a key wherever it is computed, different
for every key, not computable from a key's name, never replaced by the client's; and
the bytes it is spliced into stay the client's JSON (big integers exactly as sent)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from gateway.auth.authenticator import KeyDirectory, OpenAccess
from gateway.auth.keys import digest_of, new_key
from gateway.auth.prefix_salt import PrefixSalt, salt_of
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.config.sections import StaticKey

SECRET_A = "sk-tenant-a-0123456789"
SECRET_B = "sk-tenant-b-0123456789"
BIG = 2**70  # beyond 64 bits: orjson reads it as a float
VLLM_FORBIDDEN = set("@/\\\x00")


def salt(secret: str) -> PrefixSalt:
    return salt_of(digest_of(secret))


def test_a_keys_salt_is_stable_and_every_key_has_its_own() -> None:
    assert salt(SECRET_A) == salt(SECRET_A)
    assert salt(SECRET_A).value == salt_of(digest_of(SECRET_A)).value
    assert salt(SECRET_A).value != salt(SECRET_B).value
    for value in (salt(SECRET_A).value, salt(SECRET_B).value):
        assert 16 <= len(value) <= 128 and not VLLM_FORBIDDEN & set(value)


async def test_replicas_give_a_key_the_same_salt_and_its_name_decides_nothing() -> None:
    """Two directories (two replicas, or workers) of one store and one config agree; two
    keys of the same name and different secrets (one revoked and made again) do not."""
    store = MemoryKeyStore()
    secret, record = new_key("stored")
    await store.create(record)
    replicas = [
        KeyDirectory([StaticKey(name="static", key=SECRET_A)], store, salted=True) for _ in range(2)
    ]
    seen: dict[str, set[str]] = {"stored": set(), "static": set()}
    for directory in replicas:
        await directory.refresh()
        for name, key in (("stored", secret), ("static", SECRET_A)):
            principal = directory.known(f"Bearer {key}")
            assert principal is not None and principal.salt is not None
            seen[name].add(principal.salt.value)
    assert all(len(values) == 1 for values in seen.values())
    assert seen["stored"] != seen["static"]
    assert seen["stored"] == {salt(secret).value}
    renamed = KeyDirectory([StaticKey(name="stored", key=SECRET_B)], None, salted=True)
    twin = renamed.known(f"Bearer {SECRET_B}")
    assert twin is not None and twin.name == "stored" and twin.salt is not None
    assert twin.salt.value not in seen["stored"]
    # nothing computed from the name alone gives it
    for guess in (b"stored", digest_of("stored").encode()):
        assert hashlib.sha256(guess).hexdigest()[:32] not in seen["stored"]


def test_unsalted_directories_and_open_access_add_no_salt() -> None:
    directory = KeyDirectory([StaticKey(name="static", key=SECRET_A)], None)
    principal = directory.known(f"Bearer {SECRET_A}")
    assert principal is not None and principal.salt is None
    assert OpenAccess().known(None) is not None
    assert OpenAccess().known(None).salt is None  # type: ignore[union-attr]


def test_a_clients_salt_splits_its_own_cache_and_never_replaces_the_keys() -> None:
    a, b = salt(SECRET_A), salt(SECRET_B)
    assert a.value_for({}) == a.value_for({"cache_salt": None}) == a.value
    own = a.value_for({"cache_salt": "mine"})
    assert own.startswith(a.value + ":") and own != a.value
    assert a.value_for({"cache_salt": "other"}) != own
    # a tenant sending B's salt gets its own key's, mixed: never B's
    assert a.value_for({"cache_salt": b.value}) not in {b.value, a.value}
    for value in (own, a.value_for({"cache_salt": "x" * 5000}), a.value_for({"cache_salt": 7})):
        assert len(value) <= 128 and not VLLM_FORBIDDEN & set(value)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":[]}',
        b'  \n{ "model" : "m" }',
        b'{\n  "model": "m"\n}\n',
        b"{}",
        b"{ }",
        b'{"model":"m","tools":[{"maximum":1180591620717411303424}]}',
    ],
)
def test_the_salt_is_spliced_into_the_clients_bytes(raw: bytes) -> None:
    a = salt(SECRET_A)
    body: dict[str, Any] = orjson.loads(raw)
    salted, payload = a.onto(body, raw)
    assert orjson.loads(payload) == salted == body | {"cache_salt": a.value}
    assert payload.count(b"cache_salt") == 1
    if b"1180591620717411303424" in raw:  # the client's digits, untouched
        assert b'"maximum":1180591620717411303424' in payload
    assert a.sent(body, raw) == payload


def test_a_clients_salt_is_re_encoded_with_big_integers_exact() -> None:
    a = salt(SECRET_A)
    raw = b'{"cache_salt":"mine","model":"m","seed_like":%d}' % BIG
    body: dict[str, Any] = orjson.loads(raw)
    salted, payload = a.onto(body, raw)
    assert salted["cache_salt"] == a.value_for(body)
    assert b'"seed_like":%d' % BIG in payload and b"e+" not in payload
    assert orjson.loads(payload)["cache_salt"] == a.value_for(body)
    assert payload.count(b"cache_salt") == 1
    assert a.sent(body, raw) == payload


def test_a_salt_never_shows_in_a_repr() -> None:
    a = salt(SECRET_A)
    assert a.value not in repr(a)
