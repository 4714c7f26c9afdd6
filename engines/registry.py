"""Where supervisors publish their engines and gateways find them.

Two implementations of one protocol:

* :class:`InProcessRegistry` when one process runs both (``vgate up``, or
  ``vgate serve`` with managed engines and no Redis);
* :class:`RedisRegistry` when they run apart: one Redis hash, ``vgate:engines``,
  field = engine id, value = the record as JSON with an ``expires_at`` stamp.
  Supervisors re-publish every heartbeat; readers ignore (and delete) expired
  fields, so a supervisor that dies takes its engines out of every gateway
  within one TTL. A hash with per-record stamps rather than per-field TTLs
  because Debian's Redis 7.0 has no HEXPIRE.

Records are read one by one and tolerantly: fields this version does not know
are ignored (a newer supervisor writes them during a rolling upgrade), and a
record that still cannot be decoded is skipped, logged once and counted in
``skipped_records``: one bad record never hides the others, nor stops a
gateway's watcher (which reads the count for ``vgate_records_skipped_total``;
this package never imports the gateway).

Every Redis call ends within ``timeout_s`` (``redis.timeout_s``): connect and read
timeouts, one immediate retry for a pooled connection Redis had closed, and one
deadline over the whole call, which then raises :class:`redis.exceptions.TimeoutError`
(a :class:`RedisError`, what the supervisor and the gateway's watcher already treat
as an outage). redis-py's defaults (five-second reads, ten retries with backoff)
would hold a heartbeat or a watcher step, and a shutdown waiting on it, for about
a minute with Redis paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol, TypeVar, get_args

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("vgate.engines")

EngineState = Literal["starting", "ready", "restarting", "draining", "failed", "stopped"]
ENGINE_STATES: frozenset[str] = frozenset(get_args(EngineState))
REDIS_KEY = "vgate:engines"
_MAX_REPORTED = 1024
DEFAULT_TIMEOUT_S = 0.25
"""The deadline of one registry call unless given: ``redis.timeout_s``'s default."""
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """One engine as the registry knows it."""

    engine_id: str
    model: str
    url: str
    state: EngineState
    started_at: float
    supervisor: str
    restarts: int = 0
    expires_at: float = 0.0
    adapters: tuple[str, ...] = ()
    """The LoRA adapters it serves: model names clients may use, routed to it too."""
    api_key: str | None = dataclasses.field(default=None, repr=False)
    """The Bearer key the engine demands when vgate generated it (a key from the config
    is never published: gateways read it from their own config). Never in ``repr``."""

    @property
    def routable(self) -> bool:
        return self.state == "ready"

    @property
    def models(self) -> tuple[str, ...]:
        """Every model name it answers to: its model, then its adapters."""
        return (self.model, *self.adapters)

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> EngineRecord:
        """The record in ``raw`` (JSON), ignoring fields this version does not know.

        Raises ValueError for anything else: not a JSON object, a required field
        missing, a value of the wrong type, a state this version does not know
        (it could not tell whether such an engine is routable)."""
        data = orjson.loads(raw)  # JSONDecodeError is a ValueError
        if not isinstance(data, dict):
            raise ValueError("an engine record must be a JSON object")
        state = _field(data, "state", str)
        if state not in ENGINE_STATES:
            raise ValueError(f"unknown engine state {state!r}")
        return cls(
            engine_id=_field(data, "engine_id", str),
            model=_field(data, "model", str),
            url=_field(data, "url", str),
            state=state,  # checked against ENGINE_STATES above
            started_at=float(_field(data, "started_at", float)),
            supervisor=_field(data, "supervisor", str),
            restarts=_field(data, "restarts", int, 0),
            expires_at=float(_field(data, "expires_at", float, 0.0)),
            adapters=_adapters(data),
            api_key=None if data.get("api_key") is None else _field(data, "api_key", str),
        )


def _adapters(data: dict[str, Any]) -> tuple[str, ...]:
    names = _field(data, "adapters", list, [])
    if not all(isinstance(name, str) for name in names):
        raise ValueError("field 'adapters' is not a list of strings")
    return tuple(names)


_MISSING: Any = object()


def _field(data: dict[str, Any], name: str, kind: type[Any], default: Any = _MISSING) -> Any:
    """``data[name]`` checked to be a ``kind`` (an int passes for a float, a bool never
    for a number); ``default`` when absent, ValueError when required."""
    if name not in data:
        if default is _MISSING:
            raise ValueError(f"missing field {name!r}")
        return default
    value = data[name]
    kinds = (int, float) if kind is float else (kind,)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kinds):
        raise ValueError(f"field {name!r} is not a {kind.__name__}: {value!r:.80}")
    return value


class EngineRegistry(Protocol):
    async def publish(self, record: EngineRecord) -> None: ...

    async def remove(self, engine_id: str) -> None: ...

    async def records(self) -> list[EngineRecord]:
        """Every engine currently known and not expired (records that cannot be decoded
        are skipped, not raised)."""
        ...

    @property
    def skipped_records(self) -> int:
        """Records skipped as undecodable since this registry was made: every read that
        skips one counts it, so the count keeps rising while a bad record remains."""
        ...

    async def close(self) -> None: ...


class InProcessRegistry:
    """A dict shared by a supervisor and a gateway living in the same process."""

    def __init__(self) -> None:
        self._records: dict[str, EngineRecord] = {}

    async def publish(self, record: EngineRecord) -> None:
        self._records[record.engine_id] = record

    async def remove(self, engine_id: str) -> None:
        self._records.pop(engine_id, None)

    async def records(self) -> list[EngineRecord]:
        return list(self._records.values())

    @property
    def skipped_records(self) -> int:
        return 0  # records live as objects here: nothing to decode

    async def close(self) -> None:
        self._records.clear()


class RedisRegistry:
    """Records in one Redis hash, each valid until its heartbeat stamp expires."""

    def __init__(self, url: str, ttl_s: float, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._skipped = 0
        self._reported: set[tuple[bytes | str, int]] = set()

    async def publish(self, record: EngineRecord) -> None:
        stamped = replace(record, expires_at=time.time() + self._ttl_s)
        await self._bounded(self._redis.hset(REDIS_KEY, record.engine_id, stamped.encode()))

    async def remove(self, engine_id: str) -> None:
        await self._bounded(self._redis.hdel(REDIS_KEY, engine_id))

    async def records(self) -> list[EngineRecord]:
        raw = await self._bounded(self._redis.hgetall(REDIS_KEY))
        now = time.time()
        live: list[EngineRecord] = []
        expired: list[bytes | str] = []
        for field, value in raw.items():
            try:
                record = EngineRecord.decode(value)
            except ValueError as exc:
                self._skip(field, value, exc)
                continue
            if record.expires_at < now:
                expired.append(field)
            else:
                live.append(record)
        if expired:
            await self._bounded(self._redis.hdel(REDIS_KEY, *expired))
        return live

    @property
    def skipped_records(self) -> int:
        return self._skipped

    def _skip(self, field: bytes | str, value: bytes | str, error: ValueError) -> None:
        """Count a skipped record; log it the first time this field holds this value
        (not at every poll). The memory of what was logged is bounded."""
        self._skipped += 1
        seen = (field, hash(value))
        if seen in self._reported:
            return
        if len(self._reported) >= _MAX_REPORTED:
            self._reported.clear()
        self._reported.add(seen)
        name = field.decode(errors="replace") if isinstance(field, bytes) else field
        log.warning("engine registry: skipping record %r that cannot be decoded: %s", name, error)

    async def close(self) -> None:
        """Close the client's connections, waiting at most the deadline (then they are
        left to the garbage collector: a close must not hold a shutdown)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await self._redis.aclose()

    async def _bounded(self, call: Awaitable[_T]) -> _T:
        """``call``'s result, or :class:`redis.exceptions.TimeoutError` past the deadline."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except TimeoutError:
            raise RedisTimeoutError(f"redis did not answer within {self._timeout_s} s") from None
