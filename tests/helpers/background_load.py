"""Clients that ask without pause on threads of their own while a test injects faults."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Outcome = TypeVar("Outcome")


class BackgroundLoad(Generic[Outcome]):
    """One thread per kind in ``kinds``, each calling ``ask(kind)`` again and again from
    entering the block until leaving it; :attr:`outcomes` holds what every call
    returned, in the order they ended (``ask`` must not raise: turn errors into
    outcomes)."""

    def __init__(self, ask: Callable[[str], Outcome], kinds: Sequence[str]) -> None:
        self.outcomes: list[Outcome] = []
        self._ask = ask
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in kinds]

    def __enter__(self) -> BackgroundLoad[Outcome]:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, kind: str) -> None:
        while not self._stop.is_set():
            self.outcomes.append(self._ask(kind))
