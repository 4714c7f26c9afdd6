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
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Literal, Protocol

import orjson
import redis.asyncio as aioredis

EngineState = Literal["starting", "ready", "restarting", "draining", "failed", "stopped"]
REDIS_KEY = "vgate:engines"


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

    @property
    def routable(self) -> bool:
        return self.state == "ready"

    def encode(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> EngineRecord:
        return cls(**orjson.loads(raw))


class EngineRegistry(Protocol):
    async def publish(self, record: EngineRecord) -> None: ...

    async def remove(self, engine_id: str) -> None: ...

    async def records(self) -> list[EngineRecord]:
        """Every engine currently known and not expired."""
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

    async def close(self) -> None:
        self._records.clear()


class RedisRegistry:
    """Records in one Redis hash, each valid until its heartbeat stamp expires."""

    def __init__(self, url: str, ttl_s: float) -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._ttl_s = ttl_s

    async def publish(self, record: EngineRecord) -> None:
        stamped = replace(record, expires_at=time.time() + self._ttl_s)
        await self._redis.hset(REDIS_KEY, record.engine_id, stamped.encode())

    async def remove(self, engine_id: str) -> None:
        await self._redis.hdel(REDIS_KEY, engine_id)

    async def records(self) -> list[EngineRecord]:
        raw = await self._redis.hgetall(REDIS_KEY)
        now = time.time()
        live: list[EngineRecord] = []
        expired: list[bytes | str] = []
        for field, value in raw.items():
            record = EngineRecord.decode(value)
            if record.expires_at < now:
                expired.append(field)
            else:
                live.append(record)
        if expired:
            await self._redis.hdel(REDIS_KEY, *expired)
        return live

    async def close(self) -> None:
        await self._redis.aclose()
