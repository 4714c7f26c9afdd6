"""Rollout state in this process's memory (one gateway process, no Redis; lost when it
stops): the :class:`gateway.rollouts.state.RolloutStore` of a single-process deployment."""

from __future__ import annotations

from collections.abc import Sequence


class MemoryRolloutStore:
    """Versioned values by name with compare-and-set, for one process."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[int, bytes]] = {}
        self._version = 0

    async def version(self) -> str:
        return str(self._version)

    async def load(self, names: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        return {name: self._values[name] for name in names if name in self._values}

    async def compare_and_set(self, name: str, expected: int, value: bytes) -> int | None:
        current = self._values.get(name, (0, b""))[0]
        if current != expected:
            return None
        self._values[name] = (current + 1, value)
        self._version += 1
        return current + 1
