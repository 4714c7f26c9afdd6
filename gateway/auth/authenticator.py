"""API-key authentication: ``Authorization: Bearer <key>`` → :class:`Principal`.

Keys are held only as SHA-256 digests. A presented key is hashed and looked up
by digest in a hash table, so the time a lookup takes depends on the digest,
which tells an attacker nothing about how much of any stored secret they
guessed. Keys never reach logs or metrics: principals carry the key's *name*.

Two sources: keys declared in the config, and keys made at run time in a
:class:`gateway.auth.keys.KeyStore`. The directory keeps a local copy of the
store, reloaded whenever the store's version changes (polled every
``auth.refresh_interval_s``), so authentication costs no round trip.

A key the copy does not know makes the directory check the store's version (and
reload if it moved), so a key made a moment ago on another replica works at
once, unless another unknown key made it check less than
:data:`UNKNOWN_KEY_RECHECK_S` ago: then the key is refused without a check, and
works from the next poll on (within ``auth.refresh_interval_s``, like a
revocation). Only such checks count, not the polls: without a flood of wrong
keys, a new key always works at once. Checks run one at a
time, shared by every request that arrived while one was under way. A flood of
random keys therefore costs at most one Redis read per
:data:`UNKNOWN_KEY_RECHECK_S`, not one per request. A key still unknown after a
check is remembered as unknown (:mod:`gateway.auth.unknown_keys`), so repeating
it costs nothing at all; the copy is consulted first, so a key made later is
never hidden by that memory.

With auth disabled, :class:`OpenAccess` admits everyone as ``anonymous``, so the
pipeline has no ``if auth_enabled`` branches.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from gateway.auth.keys import KeyRecord, KeyStore, digest_of
from gateway.auth.prefix_salt import PrefixSalt, salt_of
from gateway.auth.principal import ANONYMOUS as ANONYMOUS
from gateway.auth.principal import KEY_ONLY as KEY_ONLY
from gateway.auth.principal import OPERATOR as OPERATOR
from gateway.auth.principal import Principal as Principal
from gateway.auth.principal import from_record, from_static
from gateway.auth.unknown_keys import UnknownKeys
from gateway.background import RepeatedLog, StepOutage
from gateway.config.sections import AuthSettings, StaticKey
from gateway.errors import (
    AuthenticationError,
    DependencyUnavailableError,
    StoreUnavailable,
    retry_after,
)

log = logging.getLogger("vgate.auth")
_BEARER = "bearer "

DIGESTS_KEPT = 4096
"""Authorization headers of valid keys whose digest :class:`KeyDirectory` remembers."""

UNKNOWN_KEY_RECHECK_S = 0.05
"""An unknown key makes the directory check the key store only when its last check
began longer ago than this: at most 20 checks a second, whatever the flood."""


class Authenticator(Protocol):
    def known(self, authorization: str | None) -> Principal | None:
        """The caller, when the local copy knows the key and it is valid; None for
        anything else (missing, malformed, unknown, expired: :meth:`authenticate` says).
        The common case answered without a coroutine (every request asks)."""
        ...

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an ``Authorization`` header; raises AuthenticationError."""
        ...

    async def refresh(self) -> None:
        """Pick up keys made or revoked elsewhere."""
        ...

    async def poll(self) -> None:
        """:meth:`refresh` as the ``key-refresh`` background task's step: a store that
        cannot be read raises :class:`gateway.background.StepOutage`, so that the
        task's health shows the outage."""
        ...

    def names(self) -> frozenset[str]:
        """Every key name currently known."""
        ...


class OpenAccess:
    """Auth switched off: every caller is ``anonymous`` and may use every model."""

    def known(self, authorization: str | None) -> Principal | None:
        return ANONYMOUS

    async def authenticate(self, authorization: str | None) -> Principal:
        return ANONYMOUS

    async def refresh(self) -> None:
        return None

    async def poll(self) -> None:
        return None

    def names(self) -> frozenset[str]:
        return frozenset()


class KeyDirectory:
    """Config keys plus a local copy of the key store. ``salted``: each key's principal
    carries its ``cache_salt`` (``cache.engine_prefix_scope: per_key``)."""

    def __init__(
        self,
        static: Iterable[StaticKey],
        store: KeyStore | None,
        unknown: UnknownKeys | None = None,
        clock: Callable[[], float] = time.monotonic,
        salted: bool = False,
    ) -> None:
        self._salted = salted
        self._static = {
            digest: from_static(k, self._salt(digest))
            for k in static
            for digest in (digest_of(k.key),)
        }
        self._static_names = frozenset(p.name for p in self._static.values())
        self._shadowed: frozenset[str] = frozenset()
        """Stored names last found taken by a config key (warned about once each)."""
        self._store = store
        self._stored: dict[str, Principal] = {}
        self._unknown = unknown if unknown is not None else UnknownKeys(10_000, 10.0)
        self._version: str | None = None
        self._reloading: asyncio.Future[None] | None = None
        self._clock = clock
        self._outage = RepeatedLog(log)
        """The store's outage, as the refreshes meet it (logged once, then once a minute)."""
        self._checked_at = -math.inf
        """When the last check made for an unknown key began (polls do not count)."""
        self._digests: dict[str, str] = {}
        """``Authorization`` header -> its key's digest, so that a key is hashed once,
        not on every request. Only headers that named a valid key enter (junk cannot
        fill it; at :data:`DIGESTS_KEPT` it starts over), and the digest is still looked
        up on every request, so a revoked key stops at once."""

    def known(self, authorization: str | None) -> Principal | None:
        digest = self._digests.get(authorization) if authorization else None
        remembered = digest is not None
        if digest is None:
            digest = _digest(authorization)
            if digest is None:
                return None
        principal = self._local(digest)
        if principal is None or _expired(principal):
            return None
        if not remembered and authorization:
            if len(self._digests) >= DIGESTS_KEPT:
                self._digests.clear()
            self._digests[authorization] = digest
        return principal

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="invalid_api_key"
            )
        digest = _digest(authorization)
        if digest is None:
            raise AuthenticationError(
                "The Authorization header must be 'Bearer <key>'.", code="invalid_api_key"
            )
        principal = self._local(digest)
        if principal is None and self._store is not None and digest not in self._unknown:
            principal = await self._after_reload(digest)
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        if _expired(principal):
            raise AuthenticationError(
                f"The API key '{principal.name}' has expired.", code="invalid_api_key"
            )
        return principal

    def _local(self, digest: str) -> Principal | None:
        return self._static.get(digest) or self._stored.get(digest)

    async def refresh(self) -> None:
        """Reload the store's keys if its version moved; keep the old copy if it is down.

        Run as the ``key-refresh`` background task (and at start-up). Records the
        store cannot decode are skipped by the store, so they never stop a refresh;
        anything unexpected raises to the task runner, which logs, counts and
        retries it, keeping the old copy meanwhile (the version is recorded only
        once the new copy is in place)."""
        if self._store is None:
            return
        try:
            await self._reload_once()
        except StoreUnavailable as exc:
            self._outage.failed(f"key store unreadable, keeping the last copy: {exc}")
        else:
            self._outage.recovered("key store readable again")

    async def poll(self) -> None:
        """:meth:`refresh`, then :class:`StepOutage` if the store could not be read (the
        copy was kept): the ``key-refresh`` task reports the outage (``/ready``'s
        detail) instead of a success."""
        await self.refresh()
        if self._outage.streak:
            raise StepOutage(
                f"key store unreadable, keeping {len(self._stored)} stored keys "
                f"({self._outage.streak} failed refreshes)"
            )

    def names(self) -> frozenset[str]:
        return frozenset(p.name for p in (*self._static.values(), *self._stored.values()))

    async def _after_reload(self, digest: str) -> Principal | None:
        """The key behind ``digest`` once the copy has caught up with the store (or was
        checked a moment ago); an unknown one is remembered as such. 503 when the
        store cannot be reached."""
        asked = self._clock()
        if asked - self._checked_at < UNKNOWN_KEY_RECHECK_S:
            self._unknown.add(digest)
            return None
        try:
            await self._reload_once()
        except StoreUnavailable:
            raise DependencyUnavailableError(
                "The key store is unreachable; try again shortly.",
                code="key_store_unavailable",
                headers=retry_after(1),
            ) from None
        self._checked_at = max(self._checked_at, asked)  # the reload began after ``asked``
        principal = self._local(digest)
        if principal is None:
            self._unknown.add(digest)
        return principal

    async def _reload_once(self) -> None:
        """Bring the copy up to the store's version as it is now, one reload at a time.

        A reload that began before this call may have read an older version (one
        without a key made a moment ago), so it is waited out, and the next one
        serves this call: every caller that arrived meanwhile shares that one (and
        its failure). However many callers, at most one reload runs and one more
        waits. A caller that leaves (cancelled) stops neither."""
        earlier = self._reloading
        if earlier is not None:
            await asyncio.wait([earlier])
        running = self._reloading  # None, or the next one, begun after this call
        if running is None:
            running = self._reloading = asyncio.ensure_future(self._reload())
            running.add_done_callback(self._reloaded)
        await asyncio.shield(running)

    def _reloaded(self, done: asyncio.Future[None]) -> None:
        if self._reloading is done:
            self._reloading = None
        if not done.cancelled():
            done.exception()  # seen here, raised to every caller still waiting

    async def _reload(self) -> None:
        assert self._store is not None
        version = await self._store.version()
        if version == self._version:
            return
        records = await self._store.load_all()
        self._stored = {
            r.digest: from_record(r, self._salt(r.digest)) for r in records if not self._shadows(r)
        }
        self._shadowed = frozenset(r.name for r in records if r.name in self._static_names)
        self._unknown.clear()
        self._version = version

    def _salt(self, digest: str) -> PrefixSalt | None:
        """The ``cache_salt`` of the key of ``digest``, when keys are salted."""
        return salt_of(digest) if self._salted else None

    def _shadows(self, record: KeyRecord) -> bool:
        """Whether ``record`` is named like a config key: such a stored key is refused.

        A name is who a caller is (its cache entries, stored responses, counters and
        logs): two secrets under one name would be two tenants sharing all of that.
        Making a stored key refuses a config key's name, but a config key may be added
        after a stored key of that name was made (or on one replica only); the config's
        key keeps the name and the stored one stops working, logged once."""
        if record.name not in self._static_names:
            return False
        if record.name not in self._shadowed:
            log.warning("key store: ignoring stored key %r: a key in auth.keys has that "
                        "name (revoke the stored one, or rename one of them)",
                        record.name)  # fmt: skip
        return True


def _digest(authorization: str | None) -> str | None:
    """The digest of the key in ``Bearer <key>``; None when the header is missing or not
    in that form."""
    if not authorization or authorization[: len(_BEARER)].lower() != _BEARER:
        return None
    return digest_of(authorization[len(_BEARER) :].strip())


def _expired(principal: Principal) -> bool:
    return principal.expires_at is not None and time.time() >= principal.expires_at


def build_authenticator(
    settings: AuthSettings, store: KeyStore | None, salted: bool = False
) -> Authenticator:
    """The gateway's authenticator; ``salted``: every key's requests carry its own
    ``cache_salt`` to the engines (with auth off, none does)."""
    if not settings.enabled:
        return OpenAccess()
    unknown = UnknownKeys(settings.unknown_keys_max, settings.unknown_keys_ttl_s)
    return KeyDirectory(settings.keys, store, unknown, salted=salted)
