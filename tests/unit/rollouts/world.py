"""A controller over a memory store with clocks the test moves: several 'replicas' can
share one store, as gateways share Redis."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backends.memory.rollouts import MemoryRolloutStore
from gateway.config.rollouts import RolloutSettings
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.state import RolloutBook
from gateway.rollouts.window import RolloutWindows


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def rollout(**overrides: object) -> RolloutSettings:
    data: dict[str, object] = {
        "model": "m",
        "variants": [
            {"model": "stable", "weight": 90},
            {"model": "canary", "weight": 10, "canary": True},
        ],
        "slo": {"window_s": 10, "min_requests": 20},
    }
    data.update(overrides)
    return RolloutSettings.model_validate(data)


def replica(
    settings: RolloutSettings, store: MemoryRolloutStore, clock: Clock
) -> RolloutController:
    book = RolloutBook([settings], store, clock)
    windows = RolloutWindows({settings.model: settings.slo.window_s},
                             {settings.model: [v.model for v in settings.variants]})  # fmt: skip
    return RolloutController([settings], book, windows, clock=clock, wall=clock)


def feed(
    control: RolloutController,
    variant: str,
    count: int,
    *,
    fail_every: int = 0,
    ttft_s: float = 0.1,
    itl_s: float = 0.01,
) -> None:
    for i in range(count):
        failed = fail_every > 0 and i % fail_every == 0
        control.windows.observe(
            "m", variant, failed=failed, ttft_s=ttft_s, itl_s=itl_s, now=control.monotonic()
        )
