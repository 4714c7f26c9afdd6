"""Concurrent updates of one rollout that keep losing the race get a 503 the client can
retry (``rollout_state_busy``), not a 500 with a traceback (bug hunt: 16 parallel
weight changes gave three 500s)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.errors import DependencyUnavailableError
from gateway.rollouts import operations
from gateway.rollouts.state import StateContended


class ContendedBook:
    async def update(self, rollout: str, change: Callable[[Any], Any]) -> Any:
        raise StateContended(f"rollout {rollout!r}: the state kept changing; try again")


async def test_a_contended_update_is_a_retryable_503() -> None:
    control = cast(Any, SimpleNamespace(book=ContendedBook()))
    settings = cast(Any, SimpleNamespace(model="roll"))
    with pytest.raises(DependencyUnavailableError) as refused:
        await operations._update(control, settings, lambda record: record)
    assert refused.value.status == 503
    assert refused.value.code == "rollout_state_busy"


def test_contention_is_still_a_runtime_error_for_other_callers() -> None:
    assert issubclass(StateContended, RuntimeError)  # the controller's loop logs it as before
