"""The directory hashes a valid key once, not on every request; junk never enters what
it remembers, and a key revoked in the store stops at its next request all the same."""

from __future__ import annotations

import pytest

from gateway.auth import authenticator
from gateway.auth.authenticator import DIGESTS_KEPT, KeyDirectory
from gateway.auth.keys import digest_of, new_key
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.config.sections import StaticKey

SECRET = "sk-static-0123456789"


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every key the directory hashes, in order."""
    seen: list[str] = []

    def counting(secret: str) -> str:
        seen.append(secret)
        return digest_of(secret)

    monkeypatch.setattr(authenticator, "digest_of", counting)
    return seen


def test_a_valid_key_is_hashed_once_and_junk_every_time(hashed: list[str]) -> None:
    directory = KeyDirectory([StaticKey(name="static", key=SECRET)], None)
    hashed.clear()  # (the directory hashed its config key when it was made)
    for _ in range(3):
        principal = directory.known(f"Bearer {SECRET}")
        assert principal is not None and principal.name == "static"
    assert hashed == [SECRET]
    for _ in range(2):
        assert directory.known("Bearer sk-wrong-0123456789") is None
    assert directory.known("Basic abc") is None and directory.known(None) is None
    assert hashed == [SECRET, "sk-wrong-0123456789", "sk-wrong-0123456789"]


async def test_a_remembered_key_revoked_in_the_store_stops_at_once(hashed: list[str]) -> None:
    store = MemoryKeyStore()
    secret, record = new_key("stored")
    await store.create(record)
    directory = KeyDirectory([], store)
    await directory.refresh()
    assert directory.known(f"Bearer {secret}") is not None
    assert directory.known(f"Bearer {secret}") is not None
    assert hashed == [secret]
    assert await store.revoke("stored")
    await directory.refresh()
    assert directory.known(f"Bearer {secret}") is None


def test_what_is_remembered_is_bounded(hashed: list[str]) -> None:
    keys = [StaticKey(name=f"k{i}", key=f"sk-key-{i:012d}") for i in range(DIGESTS_KEPT + 1)]
    directory = KeyDirectory(keys, None)
    hashed.clear()  # (the directory hashed every config key when it was made)
    for key in keys:
        assert directory.known(f"Bearer {key.key}") is not None
    assert directory.known(f"Bearer {keys[0].key}") is not None  # forgotten at the bound
    assert directory.known(f"Bearer {keys[-1].key}") is not None  # remembered since
    assert len(hashed) == DIGESTS_KEPT + 2
