"""Key tiers and A/B variants: every way a key gets them (config, record, admin request)
ends as the same vLLM priority on the principal, and hostile values are refused."""

from __future__ import annotations

import orjson
import pytest

from gateway.auth.authenticator import KeyDirectory
from gateway.auth.key_admin import KeyRequestError, NewKey, create_key
from gateway.auth.keys import KeyRecord, new_key
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.config.sections import StaticKey


def test_a_record_written_before_tiers_decodes_as_normal_without_variants() -> None:
    record = KeyRecord.decode(b'{"name": "old", "digest": "d", "limits": {}}')
    assert record.priority == 0 and record.variants == {}


def test_tier_and_variants_round_trip_and_show_in_listings() -> None:
    _, record = new_key("batch", priority=10, variants={"smollm2": "smollm2-awq"})
    again = KeyRecord.decode(record.encode())
    assert again == record
    public = again.public()
    assert public["priority"] == 10 and public["tier"] == "low"
    assert public["variants"] == {"smollm2": "smollm2-awq"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("priority", True),
        ("priority", 1.5),
        ("priority", "high"),  # records hold the number, never the name
        ("priority", 2**40),
        ("variants", ["a"]),
        ("variants", {"a": 1}),
    ],
)
def test_a_record_with_a_bad_tier_or_variants_is_refused(field: str, value: object) -> None:
    raw = orjson.dumps({"name": "n", "digest": "d", field: value})
    with pytest.raises(ValueError, match=field):
        KeyRecord.decode(raw)


async def test_an_admin_request_names_a_tier_and_the_principal_carries_its_number() -> None:
    store = MemoryKeyStore()
    request = NewKey.parse({"name": "chat", "priority": "high", "variants": {"m": "m-b"}})
    secret, record = await create_key(store, request, taken=())
    assert record.priority == -10 and record.variants == {"m": "m-b"}
    directory = KeyDirectory((), store)
    principal = await directory.authenticate(f"Bearer {secret}")
    assert principal.priority == -10 and dict(principal.variants) == {"m": "m-b"}


@pytest.mark.parametrize(
    "body",
    [
        {"name": "k", "priority": "urgent"},
        {"name": "k", "priority": True},
        {"name": "k", "priority": 1.0},
        {"name": "k", "priority": 2**31},
        {"name": "k", "priority": "9" * 5000},
        {"name": "k", "variants": {"m": ""}},
        {"name": "k", "variants": {"m": "x" * 300}},
        {"name": "k", "variants": {"m": "a\nb"}},
        {"name": "k", "variants": {f"m{i}": "v" for i in range(65)}},
        {"name": "k", "variants": ["m"]},
    ],
)
def test_an_admin_request_with_a_bad_tier_or_variants_is_refused(body: object) -> None:
    with pytest.raises(KeyRequestError) as refused:
        NewKey.parse(body)
    assert len(str(refused.value)) < 300


async def test_a_config_key_carries_its_tier_and_variants() -> None:
    key = StaticKey(name="cfg", key="sk-config-1", priority="low", variants={"m": "m-a"})
    directory = KeyDirectory((key,), None)
    principal = await directory.authenticate("Bearer sk-config-1")
    assert principal.priority == 10 and dict(principal.variants) == {"m": "m-a"}
    assert StaticKey(name="cfg", key="sk-config-1", priority=3).priority == 3
