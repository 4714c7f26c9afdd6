"""API keys in this process's memory (no Redis; lost when it stops)."""

from __future__ import annotations

from gateway.auth.keys import KeyExistsError, KeyRecord


class MemoryKeyStore:
    """Keys for one process with no Redis (lost when it stops)."""

    def __init__(self) -> None:
        self._by_name: dict[str, KeyRecord] = {}
        self._version = 0

    async def version(self) -> str:
        return str(self._version)

    async def load_all(self) -> list[KeyRecord]:
        return list(self._by_name.values())

    async def get(self, digest: str) -> KeyRecord | None:
        return next((r for r in self._by_name.values() if r.digest == digest), None)

    @property
    def skipped_records(self) -> int:
        return 0  # records live as objects here: nothing to decode

    async def create(self, record: KeyRecord) -> None:
        if record.name in self._by_name:
            raise KeyExistsError(record.name)
        self._by_name[record.name] = record
        self._version += 1

    async def revoke(self, name: str) -> bool:
        found = self._by_name.pop(name, None) is not None
        self._version += found
        return found

    async def close(self) -> None:
        self._by_name.clear()
