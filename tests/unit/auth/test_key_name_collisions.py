"""A stored key named like a config key: the name stays the config key's.

A name is who a caller is (cache entries, stored responses, rate-limit counters,
logs). ``/admin/keys`` and ``vgate keys`` refuse a config key's name, but a config key
may be added after a stored key of that name was made: both secrets then worked as
one tenant, each reading the other's per-key cache and stored responses (bug hunt)."""

from __future__ import annotations

import logging

import pytest

from gateway.auth.authenticator import KeyDirectory
from gateway.auth.keys import new_key
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.config.sections import StaticKey
from gateway.errors import AuthenticationError

CONFIG_SECRET = "sk-config-0123456789"


async def test_a_stored_key_with_a_config_keys_name_is_refused_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryKeyStore()
    shadowed_secret, shadowed = new_key("bob")
    other_secret, other = new_key("carol")
    await store.create(shadowed)
    await store.create(other)
    directory = KeyDirectory([StaticKey(name="bob", key=CONFIG_SECRET)], store)
    with caplog.at_level(logging.WARNING, "vgate.auth"):
        await directory.refresh()
        await store.revoke("carol")  # the version moves: a second reload
        await directory.refresh()

    assert (await directory.authenticate(f"Bearer {CONFIG_SECRET}")).name == "bob"
    with pytest.raises(AuthenticationError):
        await directory.authenticate(f"Bearer {shadowed_secret}")
    assert directory.known(f"Bearer {shadowed_secret}") is None
    with pytest.raises(AuthenticationError):
        await directory.authenticate(f"Bearer {other_secret}")  # revoked
    warnings = [r for r in caplog.records if "auth.keys has that name" in r.getMessage()]
    assert len(warnings) == 1 and "'bob'" in warnings[0].getMessage()


async def test_stored_keys_with_other_names_still_work() -> None:
    store = MemoryKeyStore()
    secret, record = new_key("dave")
    await store.create(record)
    directory = KeyDirectory([StaticKey(name="bob", key=CONFIG_SECRET)], store)
    await directory.refresh()
    assert (await directory.authenticate(f"Bearer {secret}")).name == "dave"
