"""Rollout state shared by every gateway replica: weights, rollbacks, the last change.

Each rollout's state is one :class:`RolloutRecord` in the state backend
(:class:`RolloutStore`: Redis for replicas, memory for one process), with a version
that every write bumps. A write is a compare-and-set on that version, so two
replicas acting on the same state cannot both apply a promotion step (the second
finds the version moved and judges again from the new state), and a rollback that
another replica already made is not made twice.

:class:`RolloutBook` is one replica's copy: :meth:`RolloutBook.weights` answers
from memory on every request (the :class:`~gateway.rollouts.contracts.RolloutWeights`
of the request path), and :meth:`RolloutBook.refresh`, run every 0.25 s, polls the
store's version (one round trip) and reloads only when it moved, so a change made
on one replica is applied by all of them within a second.

A record is stored under the rollout's name *and a digest of its configured
variants* (names, weights, canary flags): changing them in the config starts a
fresh state with the configured weights, while replicas still running the old
config keep using (and sharing) the old one until they restart, instead of the two
configs overwriting each other's state during a rolling deploy. SLO and promotion
settings are not in the digest: changing them keeps the state.

Times in records are wall-clock seconds (``time.time()``): replicas compare them.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

from gateway.config.rollouts import RolloutSettings

log = logging.getLogger("vgate.rollouts")

Actor = Literal["config", "controller", "operator"]
Action = Literal["init", "rollback", "promote", "set"]
_FORMAT = 1
_UPDATE_ATTEMPTS = 8


class StateContended(RuntimeError):
    """A rollout's state changed under every one of the update's attempts (concurrent
    updates): the caller may try again."""


class RolloutStore(Protocol):
    """Versioned values by name (bytes the store never reads), compare-and-set writes."""

    async def version(self) -> str:
        """A token that changes whenever any value changes."""
        ...

    async def load(self, names: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """``name → (version, value)`` of the names that exist."""
        ...

    async def compare_and_set(self, name: str, expected: int, value: bytes) -> int | None:
        """Store ``value`` if ``name``'s version is ``expected`` (0: absent): the new
        version, or None when it had moved."""
        ...


@dataclass(frozen=True, slots=True)
class RollbackMark:
    """Why and when a canary was set to weight 0."""

    reason: str
    detail: str
    at: float
    by: Actor

    def public(self) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "at": self.at, "by": self.by}


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    """One rollout's shared state."""

    weights: Mapping[str, float]
    changed_at: float
    changed_by: Actor = "config"
    action: Action = "init"
    rolled_back: Mapping[str, RollbackMark] = field(default_factory=dict)
    """Canaries set to 0 by a rollback, not promoted until an operator sets them again."""
    last_rollback: tuple[str, RollbackMark] | None = None
    """The most recent rollback, kept after an operator re-enables the canary."""
    rearmed_at: Mapping[str, float] = field(default_factory=dict)
    """When an operator last re-enabled each variant: every replica then clears that
    variant's window, so it is judged on what it does from then on."""

    def encode(self) -> bytes:
        last = self.last_rollback
        return orjson.dumps(
            {
                "format": _FORMAT,
                "weights": dict(self.weights),
                "changed_at": self.changed_at,
                "changed_by": self.changed_by,
                "action": self.action,
                "rolled_back": {v: m.public() for v, m in self.rolled_back.items()},
                "last_rollback": None if last is None else {"variant": last[0], **last[1].public()},
                "rearmed_at": dict(self.rearmed_at),
            }
        )

    @classmethod
    def decode(cls, raw: bytes, variants: Sequence[str]) -> RolloutRecord:
        """The record in ``raw``; ValueError when it is not one for these ``variants``
        (written by another version, or damaged)."""
        try:
            data = orjson.loads(raw)
            weights = {v: float(data["weights"][v]) for v in variants}
            if any(not 0 <= w < float("inf") for w in weights.values()):
                raise ValueError("a weight is negative or not finite")
            marks = {v: _mark(m) for v, m in data["rolled_back"].items() if v in variants}
            last = data.get("last_rollback")
            return cls(
                weights=weights,
                changed_at=float(data["changed_at"]),
                changed_by=data["changed_by"],
                action=data["action"],
                rolled_back=marks,
                last_rollback=None if last is None else (str(last["variant"]), _mark(last)),
                rearmed_at={v: float(t) for v, t in data.get("rearmed_at", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"not a rollout record: {exc!r}") from None


def _mark(data: Mapping[str, Any]) -> RollbackMark:
    return RollbackMark(str(data["reason"]), str(data["detail"]), float(data["at"]), data["by"])


@dataclass(frozen=True, slots=True)
class Versioned:
    record: RolloutRecord
    version: int
    """The store's version of the record; 0 while none was read or written."""


def config_digest(rollout: RolloutSettings) -> str:
    """What identifies a rollout's configured variants (see the module docstring)."""
    variants = sorted((v.model, v.weight, v.canary) for v in rollout.variants)
    return hashlib.sha256(orjson.dumps([rollout.model, variants])).hexdigest()[:16]


def initial_record(rollout: RolloutSettings, now: float) -> RolloutRecord:
    return RolloutRecord({v.model: v.weight for v in rollout.variants}, now)


class RolloutBook:
    """This replica's copy of every rollout's shared state (see the module docstring)."""

    def __init__(
        self,
        rollouts: Sequence[RolloutSettings],
        store: RolloutStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = {r.model: r for r in rollouts}
        self._names = {r.model: f"{r.model}@{config_digest(r)}" for r in rollouts}
        self._store = store
        self._clock = clock
        now = clock()
        self._copies = {r.model: Versioned(initial_record(r, now), 0) for r in rollouts}
        self._weights: dict[str, Mapping[str, float]] = {
            name: dict(v.record.weights) for name, v in self._copies.items()
        }
        self._seen_version: str | None = None
        self._writes = 0
        """Successful writes of this replica: a load begun before one may be older than
        the copy the write left, and is not adopted."""

    def weights(self, rollout: str) -> Mapping[str, float]:
        return self._weights.get(rollout, {})

    def current(self, rollout: str) -> Versioned | None:
        return self._copies.get(rollout)

    def rollouts(self) -> Sequence[str]:
        return list(self._settings)

    async def refresh(self) -> None:
        """Reload the records when the store's version moved; write the configured
        state for a rollout the store does not hold yet. Raises StoreUnavailable (the
        copy is kept)."""
        version = await self._store.version()
        if version == self._seen_version:
            return
        writes = self._writes
        loaded = await self._store.load(list(self._names.values()))
        for rollout, name in self._names.items():
            found = loaded.get(name)
            if found is None:
                await self._create(rollout)
            elif self._writes == writes:  # else a write of ours may be newer: next time
                self._adopt(rollout, found)
        self._seen_version = version if self._writes == writes else None

    async def write(self, rollout: str, expected: int, record: RolloutRecord) -> bool:
        """Store ``record`` if the stored version is still ``expected``; on success the
        local copy follows at once."""
        new_version = await self._store.compare_and_set(
            self._names[rollout], expected, record.encode()
        )
        if new_version is None:
            return False
        self._writes += 1
        self._set(rollout, Versioned(record, new_version))
        return True

    async def update(
        self, rollout: str, change: Callable[[RolloutRecord], RolloutRecord | None]
    ) -> Versioned:
        """Apply ``change`` to the stored record, re-reading and retrying when another
        replica wrote in between (``change`` returning None: nothing to write). The
        record as it stands after. Raises StoreUnavailable."""
        name = self._names[rollout]
        for _ in range(_UPDATE_ATTEMPTS):
            writes = self._writes
            loaded = (await self._store.load([name])).get(name)
            if loaded is None:
                await self._create(rollout)
                continue
            if self._writes == writes:
                self._adopt(rollout, loaded)
            current = self._copies[rollout]
            changed = change(current.record)
            if changed is None or await self.write(rollout, current.version, changed):
                return self._copies[rollout]
        raise StateContended(f"rollout {rollout!r}: the state kept changing; try again")

    async def _create(self, rollout: str) -> None:
        record = initial_record(self._settings[rollout], self._clock())
        if not await self.write(rollout, 0, record):
            name = self._names[rollout]
            writes = self._writes
            found = (await self._store.load([name])).get(name)
            if found is not None and self._writes == writes:
                self._adopt(rollout, found)

    def _adopt(self, rollout: str, found: tuple[int, bytes]) -> None:
        version, raw = found
        if version == self._copies[rollout].version:
            return
        variants = [v.model for v in self._settings[rollout].variants]
        try:
            record = RolloutRecord.decode(raw, variants)
        except ValueError as exc:
            log.warning("rollout %s: ignoring a stored state that cannot be read: %s",
                        rollout, exc)  # fmt: skip
            record = initial_record(self._settings[rollout], self._clock())
        self._set(rollout, Versioned(record, version))

    def _set(self, rollout: str, versioned: Versioned) -> None:
        self._copies[rollout] = versioned
        self._weights[rollout] = dict(versioned.record.weights)
