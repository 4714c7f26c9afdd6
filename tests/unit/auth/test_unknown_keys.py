"""Unknown keys: the bounded negative cache, and what the directory asks the store.

A flood of wrong keys must not cost a key-store round trip each, and a key made
in the store must work at once all the same."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable

import pytest

from gateway.auth.authenticator import UNKNOWN_KEY_RECHECK_S, KeyDirectory, build_authenticator
from gateway.auth.keys import KeyRecord, new_key
from gateway.auth.unknown_keys import UnknownKeys
from gateway.backends.memory.keys import MemoryKeyStore
from gateway.config.sections import AuthSettings
from gateway.errors import AuthenticationError, DependencyUnavailableError, StoreUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_unknown_key_is_remembered_for_its_ttl() -> None:
    clock = Clock()
    unknown = UnknownKeys(10, ttl_s=5.0, clock=clock)
    unknown.add("a")
    clock.now = 4.9
    assert "a" in unknown
    clock.now = 5.0
    assert "a" not in unknown
    assert len(unknown) == 0


def test_the_oldest_are_forgotten_past_the_bound() -> None:
    unknown = UnknownKeys(3, ttl_s=60.0, clock=Clock())
    for digest in "abcd":
        unknown.add(digest)
    assert len(unknown) == 3
    assert "a" not in unknown and all(d in unknown for d in "bcd")
    unknown.add("b")  # seen again: the youngest now
    unknown.add("e")
    assert "c" not in unknown and "b" in unknown


def test_expired_entries_leave_as_new_ones_arrive() -> None:
    clock = Clock()
    unknown = UnknownKeys(1000, ttl_s=1.0, clock=clock)
    for i in range(100):
        unknown.add(str(i))
    clock.now = 2.0
    unknown.add("fresh")
    assert len(unknown) == 1


def test_size_zero_remembers_nothing() -> None:
    unknown = UnknownKeys(0, ttl_s=60.0, clock=Clock())
    unknown.add("a")
    assert "a" not in unknown and len(unknown) == 0


class CountingStore(MemoryKeyStore):
    """A key store that counts what the directory asks of it, optionally slowly."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.versions = 0
        self.loads = 0
        self.lookups = 0
        self.down = False
        self._delay_s = delay_s

    async def version(self) -> str:
        """The version when asked, answered ``delay_s`` later (a round trip)."""
        self.versions += 1
        version = await super().version()
        await asyncio.sleep(self._delay_s)
        if self.down:
            raise StoreUnavailable("down")
        return version

    async def load_all(self) -> list[KeyRecord]:
        self.loads += 1
        return await super().load_all()

    async def get(self, digest: str) -> KeyRecord | None:
        self.lookups += 1
        return await super().get(digest)


def bearer(secret: str) -> str:
    return f"Bearer {secret}"


def directory_over(store: CountingStore, max_entries: int = 10_000) -> tuple[KeyDirectory, Clock]:
    """A directory on a clock that only moves when the test says so."""
    clock = Clock()
    unknown = UnknownKeys(max_entries, ttl_s=60.0, clock=clock)
    return KeyDirectory([], store, unknown, clock=clock), clock


async def refreshed(store: CountingStore, max_entries: int = 10_000) -> tuple[KeyDirectory, Clock]:
    """A directory that loaded the store, its last check long enough ago to check again."""
    directory, clock = directory_over(store, max_entries)
    await directory.refresh()
    clock.now += UNKNOWN_KEY_RECHECK_S
    return directory, clock


async def test_a_repeated_unknown_key_costs_one_store_check() -> None:
    store = CountingStore()
    directory, clock = await refreshed(store)
    checks = store.versions
    for _ in range(50):
        with pytest.raises(AuthenticationError):
            await directory.authenticate(bearer("sk-wrong-0123456789"))
        clock.now += UNKNOWN_KEY_RECHECK_S  # remembered, not merely throttled
    assert store.versions == checks + 1
    assert store.lookups == 0


async def test_a_flood_of_random_keys_shares_its_store_checks() -> None:
    store = CountingStore(delay_s=0.01)
    directory, _ = await refreshed(store)
    checks = store.versions

    async def wrong() -> None:
        with pytest.raises(AuthenticationError):
            await directory.authenticate(bearer(f"sk-{secrets.token_hex(16)}"))

    await asyncio.gather(*(wrong() for _ in range(500)))
    assert store.versions - checks <= 2  # one under way when they arrived, one after
    assert store.lookups == 0


async def test_random_keys_one_after_another_check_at_most_once_per_interval() -> None:
    store = CountingStore()
    directory, clock = await refreshed(store)
    checks = store.versions
    for _ in range(100):  # 100 keys within one recheck interval: one check
        with pytest.raises(AuthenticationError):
            await directory.authenticate(bearer(f"sk-{secrets.token_hex(16)}"))
        clock.now += UNKNOWN_KEY_RECHECK_S / 200
    assert store.versions == checks + 1


async def test_a_key_made_after_a_flood_of_wrong_keys_works_at_once() -> None:
    store = CountingStore()
    directory, clock = await refreshed(store)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            await directory.authenticate(bearer(f"sk-{secrets.token_hex(16)}"))
    secret, record = new_key("made-later")
    await store.create(record)  # made elsewhere: no refresh here
    clock.now += UNKNOWN_KEY_RECHECK_S
    principal = await directory.authenticate(bearer(secret))
    assert principal.name == "made-later"
    assert directory.known(bearer(secret)) == principal


async def test_a_key_made_just_after_a_check_works_from_the_next_poll() -> None:
    """Within the recheck interval the copy answers alone; the next poll brings the key
    in (and forgets that it was refused), as it brings in a revocation."""
    store = CountingStore()
    directory, _ = await refreshed(store)
    with pytest.raises(AuthenticationError):
        await directory.authenticate(bearer("sk-wrong-0123456789"))  # a check, just now
    secret, record = new_key("made-just-after")
    await store.create(record)
    with pytest.raises(AuthenticationError):
        await directory.authenticate(bearer(secret))
    await directory.refresh()  # the key-refresh task's next poll
    assert (await directory.authenticate(bearer(secret))).name == "made-just-after"


async def test_a_key_made_just_after_a_poll_works_at_once() -> None:
    """Polls do not hold back checks: without wrong keys, a new key always works."""
    store = CountingStore()
    directory, _ = directory_over(store)
    await directory.refresh()  # the key-refresh task, a moment ago
    secret, record = new_key("made-after-the-poll")
    await store.create(record)
    assert (await directory.authenticate(bearer(secret))).name == "made-after-the-poll"


async def test_a_key_made_while_a_check_is_under_way_is_not_missed() -> None:
    """A check that began before the key existed cannot vouch for its absence."""
    store = CountingStore(delay_s=0.05)
    directory, _ = await refreshed(store)
    early = asyncio.create_task(directory.authenticate(bearer("sk-early-0123456789")))
    await until(lambda: store.versions == 2)  # its check is reading the version now
    secret, record = new_key("made-meanwhile")
    await store.create(record)
    principal = await directory.authenticate(bearer(secret))
    assert principal.name == "made-meanwhile"
    with pytest.raises(AuthenticationError):
        await early


async def test_a_remembered_unknown_key_is_forgotten_when_keys_change() -> None:
    store = CountingStore()
    directory, clock = await refreshed(store)
    wrong = bearer("sk-wrong-0123456789")
    with pytest.raises(AuthenticationError):
        await directory.authenticate(wrong)
    _, record = new_key("other")
    await store.create(record)
    await directory.refresh()  # the key-refresh task sees the version move
    clock.now += UNKNOWN_KEY_RECHECK_S
    checks = store.versions
    with pytest.raises(AuthenticationError):
        await directory.authenticate(wrong)
    assert store.versions == checks + 1  # checked again, not answered from memory


async def test_the_store_down_is_503_and_a_remembered_key_is_still_401() -> None:
    store = CountingStore()
    directory, clock = await refreshed(store)
    remembered = bearer("sk-remembered-0123456789")
    with pytest.raises(AuthenticationError):
        await directory.authenticate(remembered)
    store.down = True
    clock.now += UNKNOWN_KEY_RECHECK_S
    with pytest.raises(DependencyUnavailableError):
        await directory.authenticate(bearer("sk-never-seen-0123456789"))
    with pytest.raises(AuthenticationError):
        await directory.authenticate(remembered)


async def test_refresh_keeps_the_copy_while_the_store_is_down() -> None:
    store = CountingStore()
    directory, _ = directory_over(store)
    secret, record = new_key("kept")
    await store.create(record)
    await directory.refresh()
    store.down = True
    await directory.refresh()
    assert directory.known(bearer(secret)) is not None


async def test_the_memory_is_bounded() -> None:
    store = CountingStore()
    directory, clock = await refreshed(store, max_entries=2)
    wrong = [bearer(f"sk-wrong-{i}-0123456789") for i in range(3)]
    for key in [*wrong, wrong[2], wrong[1]]:  # the last two are remembered ...
        with pytest.raises(AuthenticationError):
            await directory.authenticate(key)
        clock.now += UNKNOWN_KEY_RECHECK_S
    checks = store.versions
    with pytest.raises(AuthenticationError):
        await directory.authenticate(wrong[0])  # ... the first was forgotten: checked again
    assert store.versions == checks + 1


def test_the_settings_build_it() -> None:
    assert (AuthSettings().unknown_keys_max, AuthSettings().unknown_keys_ttl_s) == (10_000, 10.0)
    settings = AuthSettings(enabled=True, unknown_keys_max=2, unknown_keys_ttl_s=1.5)
    assert isinstance(build_authenticator(settings, MemoryKeyStore()), KeyDirectory)


async def until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)
