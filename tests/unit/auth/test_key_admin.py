"""Making and listing keys with hostile input: an expiry beyond what a date can show is
refused before anything is stored, and a listing survives such a record already stored."""

from __future__ import annotations

import time

import pytest

from gateway.auth.key_admin import KeyRequestError, NewKey, create_key, list_keys
from gateway.auth.keys import LAST_MOMENT, KeyRecord, digest_of, parse_expiry
from gateway.backends.memory.keys import MemoryKeyStore


@pytest.mark.parametrize(
    "expires",
    [
        "99999999999d",  # a duration past the year 9999
        "9999-12-31T23:59:59-12:00",  # a date whose UTC moment is in the year 10000
        "9" * 5000 + "d",  # more digits than int() will read
        "1970-01-01",  # the past
        "soon",
    ],
)
async def test_an_expiry_out_of_range_is_refused_and_nothing_is_stored(expires: str) -> None:
    store = MemoryKeyStore()
    with pytest.raises(KeyRequestError) as refused:
        request = NewKey.parse({"name": "far", "expires": expires})
        await create_key(store, request, taken=())
    assert len(str(refused.value)) < 200  # the input is not echoed in full
    assert await store.load_all() == []


async def test_the_last_expiry_a_date_can_show_is_accepted() -> None:
    store = MemoryKeyStore()
    _, record = await create_key(store, NewKey.parse({"name": "long", "expires": "9999-12-31"}), ())
    assert record.expires_at is not None and record.expires_at <= LAST_MOMENT
    assert (await list_keys(store))[0]["expires_at"].startswith("9999-12-31")


@pytest.mark.parametrize("field", ["rpm", "tpm", "max_concurrent"])
@pytest.mark.parametrize("value", [0, 2**60, 1e30, "10", True])
def test_limits_must_be_sane_integers(field: str, value: object) -> None:
    with pytest.raises(KeyRequestError) as refused:
        NewKey.parse({"name": "k", field: value})
    assert str(refused.value).startswith(field)


@pytest.mark.parametrize("body", [[], "k", 5, None, {"name": ""}, {"name": "k" * 65}])
def test_a_body_that_is_not_a_key_request_is_refused(body: object) -> None:
    with pytest.raises(KeyRequestError):
        NewKey.parse(body)


async def test_a_listing_survives_dates_no_calendar_can_show() -> None:
    """A record written before expiries were bounded still lists (clamped to a date)."""
    store = MemoryKeyStore()
    far = KeyRecord("far", digest_of("sk-far"), created_at=1e20, expires_at=1e20)
    early = KeyRecord("early", digest_of("sk-early"), created_at=-1e20, expires_at=-1e20)
    for record in (far, early):
        await store.create(record)
    rows = {row["name"]: row for row in await list_keys(store)}
    assert rows["far"]["expires_at"] == "9999-12-31T23:59:59+00:00"
    assert rows["early"]["created_at"] == "0001-01-01T00:00:00+00:00"


def test_durations_count_from_now() -> None:
    now = time.time()
    assert parse_expiry("90s", now) == now + 90
    assert parse_expiry("2w", now) == now + 2 * 604800
