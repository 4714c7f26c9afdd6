"""The rollout controller: rolls a breaching canary back, promotes a healthy one.

One :class:`RolloutController` per gateway process. It is what the request path
is given as its :class:`~gateway.rollouts.contracts.RolloutWeights` (the shared
weights, answered from this replica's copy) and its
:class:`~gateway.rollouts.contracts.VariantObserver` (each finished request goes
into this replica's windows), and its :meth:`RolloutController.step` runs as the
``rollouts`` background task every :data:`STEP_S` seconds:

1. refresh the copy of the shared state (:class:`~gateway.rollouts.state.RolloutBook`);
2. for each canary with a weight above 0, judge its window against the stable
   variants' (:func:`~gateway.rollouts.verdict.judge`). A breach sets its weight to
   0 at once (a compare-and-set; if another replica did it first there is nothing
   left to do), logs one warning line saying why, counts it and keeps the reason
   and time in the state. With ``promote:``, a canary judged healthy on every step
   for ``healthy_for_s`` (since the state last changed) moves to the next step; the
   write is a compare-and-set on the version it was judged on, so when several
   replicas decide at once only one step is taken.

Every replica judges from its own windows, i.e. from the requests it served
itself: replicas behind a balancer see alike traffic, and whichever decides first
acts for all. A rolled-back canary is never promoted by the controller; an
operator re-enables it (``/admin/rollouts``, ``vgate rollout``), which also clears
its window on every replica so it is judged afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from gateway.background import RepeatedLog
from gateway.config.rollouts import RolloutSettings
from gateway.errors import StoreUnavailable
from gateway.rollouts.rollout_metrics import RolloutMetrics
from gateway.rollouts.state import RollbackMark, RolloutBook, RolloutRecord, Versioned
from gateway.rollouts.verdict import (
    Breach,
    Healthy,
    Verdict,
    judge,
    next_step,
    rollback_weights,
    share_percent,
    step_weights,
)
from gateway.rollouts.window import RolloutWindows

log = logging.getLogger("vgate.rollouts")

STEP_S = 0.25
"""How often the shared state is polled and every canary judged."""


@dataclass(slots=True)
class CanaryWatch:
    """What this replica last concluded about one canary."""

    verdict: Verdict | None = None
    healthy_since: float | None = None
    """Monotonic time of the first of an unbroken run of healthy verdicts."""
    version: int = -1
    """The state version the run began under: a change restarts it."""


class RolloutController:
    """See the module docstring."""

    def __init__(
        self,
        rollouts: Sequence[RolloutSettings],
        book: RolloutBook,
        windows: RolloutWindows,
        metrics: RolloutMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = {r.model: r for r in rollouts}
        self.book = book
        self.windows = windows
        self.metrics = metrics
        self._clock = clock
        self._wall = wall
        self._watches = {(r.model, c): CanaryWatch() for r in rollouts for c in r.canaries}
        self._rearmed: dict[tuple[str, str], float] = {}
        self._outage = RepeatedLog(log)

    # The request path's two contracts.

    def weights(self, rollout: str) -> Mapping[str, float]:
        return self.book.weights(rollout)

    def observe(
        self,
        rollout: str,
        variant: str,
        *,
        failed: bool,
        ttft_s: float | None,
        itl_s: float | None,
    ) -> None:
        self.windows.observe(rollout, variant, failed=failed, ttft_s=ttft_s, itl_s=itl_s)

    # The background step.

    async def step(self) -> None:
        try:
            await self.book.refresh()
            for rollout in self.settings:
                await self._control(rollout)
        except StoreUnavailable as exc:
            self._outage.failed(f"rollout state unreachable, keeping the last weights: {exc}")
            return
        self._outage.recovered("rollout state reachable again")

    def wall_time(self) -> float:
        return self._wall()

    def monotonic(self) -> float:
        return self._clock()

    def watch(self, rollout: str, canary: str) -> CanaryWatch | None:
        return self._watches.get((rollout, canary))

    def weight_rows(self) -> Iterator[tuple[str, str, float]]:
        """``(rollout, variant, weight)`` as applied here, for the weight gauge."""
        for rollout in self.settings:
            for variant, weight in self.book.weights(rollout).items():
                yield rollout, variant, weight

    def count_rollback(self, rollout: str, variant: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.rollbacks.labels(rollout, variant, reason).inc()

    async def _control(self, rollout: str) -> None:
        settings = self.settings[rollout]
        versioned = self.book.current(rollout)
        assert versioned is not None
        self._clear_rearmed(rollout, versioned.record)
        now = self._clock()
        stable = self.windows.stats(rollout, settings.stable, now)
        for canary in settings.canaries:
            watch = self._watches[(rollout, canary)]
            record = versioned.record
            if canary in record.rolled_back or record.weights.get(canary, 0.0) <= 0:
                watch.verdict, watch.healthy_since = None, None
                continue
            verdict = judge(self.windows.stats(rollout, (canary,), now), stable, settings.slo)
            watch.verdict = verdict
            if isinstance(verdict, Breach):
                watch.healthy_since = None
                await self._roll_back(rollout, canary, verdict)
                versioned = self.book.current(rollout) or versioned
            elif isinstance(verdict, Healthy):
                if watch.healthy_since is None or watch.version != versioned.version:
                    watch.healthy_since, watch.version = now, versioned.version
                if await self._promote_if_due(
                    settings, canary, versioned, now - watch.healthy_since
                ):
                    versioned = self.book.current(rollout) or versioned
            else:
                watch.healthy_since = None

    async def _roll_back(self, rollout: str, canary: str, breach: Breach) -> None:
        settings = self.settings[rollout]
        configured = {v.model: v.weight for v in settings.variants if not v.canary}
        made: list[RolloutRecord] = []

        def change(record: RolloutRecord) -> RolloutRecord | None:
            if canary in record.rolled_back or record.weights.get(canary, 0.0) <= 0:
                return None  # done already (another replica, or an operator)
            mark = RollbackMark(breach.reason, breach.detail, self._wall(), "controller")
            made.append(
                replace(
                    record,
                    weights=rollback_weights(record.weights, configured, canary),
                    changed_at=mark.at,
                    changed_by="controller",
                    action="rollback",
                    rolled_back={**record.rolled_back, canary: mark},
                    last_rollback=(canary, mark),
                )
            )
            return made[-1]

        after = await self.book.update(rollout, change)
        if made and after.record is made[-1]:
            log.warning("rollout %s: canary %s rolled back to weight 0: %s",
                        rollout, canary, breach.detail)  # fmt: skip
            self.count_rollback(rollout, canary, breach.reason)

    async def _promote_if_due(
        self, settings: RolloutSettings, canary: str, versioned: Versioned, healthy_s: float
    ) -> bool:
        promote = settings.promote
        if promote is None or healthy_s < promote.healthy_for_s:
            return False
        record = versioned.record
        percent = next_step(promote.steps, share_percent(record.weights, canary))
        if percent is None:
            return False
        configured = {v.model: v.weight for v in settings.variants}
        promoted = replace(
            record,
            weights=step_weights(record.weights, configured, canary, percent),
            changed_at=self._wall(),
            changed_by="controller",
            action="promote",
        )
        if not await self.book.write(settings.model, versioned.version, promoted):
            return False  # another replica changed the state first: judge it again
        log.info("rollout %s: canary %s promoted to %g%% of the traffic after %.0f s healthy",
                 settings.model, canary, percent, healthy_s)  # fmt: skip
        return True

    def _clear_rearmed(self, rollout: str, record: RolloutRecord) -> None:
        """Clear the window of each variant an operator re-enabled since the last look."""
        for variant, at in record.rearmed_at.items():
            if self._rearmed.get((rollout, variant)) != at:
                self._rearmed[(rollout, variant)] = at
                self.windows.clear(rollout, variant)
