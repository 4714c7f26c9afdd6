"""The controller's decisions as pure functions: is a canary in breach, healthy, or not
judged yet, and what weights put it at a promotion step.

No clock, no I/O: :mod:`gateway.rollouts.controller` feeds them window statistics
and the current weights, and the unit tests feed them numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config.rollouts import SloSettings
from gateway.rollouts.window import WindowStats

BreachReason = Literal["error_rate", "ttft_p95", "itl_p95"]
"""The ``reason`` label of ``vgate_rollout_rollbacks_total`` set by the controller
(an operator's rollback is ``operator``)."""

DEFAULT_STEPS = (10.0, 25.0, 50.0, 100.0)
"""The ladder a manual promotion climbs when the rollout has no ``promote:``."""
_SHARE_SLACK = 1e-6


@dataclass(frozen=True, slots=True)
class Breach:
    reason: BreachReason
    detail: str
    """One line for the log and ``/admin/rollouts``: the figures compared."""


@dataclass(frozen=True, slots=True)
class Healthy:
    """Judged, and within every SLO."""


@dataclass(frozen=True, slots=True)
class Waiting:
    """Too few canary requests in the window to judge (fewer than ``min_requests``)."""

    requests: int


Verdict = Breach | Healthy | Waiting


def judge(canary: WindowStats, stable: WindowStats, slo: SloSettings) -> Verdict:
    """The canary against the SLO and against the stable variants taken together.

    Nothing is judged before ``slo.min_requests`` canary requests in the window. The
    error rate is absolute (``max_error_rate``). A latency p95 is compared only when
    both sides hold at least ``min_requests`` samples of it: a p95 of a handful of
    samples is noise, and with no stable traffic (a canary at 100%) there is nothing
    to compare with.
    """
    if canary.requests < slo.min_requests:
        return Waiting(canary.requests)
    if canary.error_rate > slo.max_error_rate:
        return Breach(
            "error_rate",
            f"error rate {canary.error_rate:.3f} ({canary.failures}/{canary.requests}) "
            f"> max_error_rate {slo.max_error_rate}",
        )
    ttft = _ratio_breach(
        "ttft_p95",
        (canary.ttft_samples, canary.ttft_p95_s),
        (stable.ttft_samples, stable.ttft_p95_s),
        slo.max_ttft_p95_ratio,
        slo.min_requests,
    )
    if ttft is not None:
        return ttft
    itl = _ratio_breach(
        "itl_p95",
        (canary.itl_samples, canary.itl_p95_s),
        (stable.itl_samples, stable.itl_p95_s),
        slo.max_itl_p95_ratio,
        slo.min_requests,
    )
    return itl if itl is not None else Healthy()


def _ratio_breach(
    reason: BreachReason,
    canary: tuple[int, float | None],
    stable: tuple[int, float | None],
    max_ratio: float,
    min_samples: int,
) -> Breach | None:
    (canary_n, canary_p95), (stable_n, stable_p95) = canary, stable
    if canary_n < min_samples or stable_n < min_samples:
        return None
    if canary_p95 is None or stable_p95 is None or stable_p95 <= 0:
        return None
    ratio = canary_p95 / stable_p95
    if ratio <= max_ratio:
        return None
    return Breach(
        reason,
        f"{reason} {canary_p95 * 1000:.1f} ms vs stable {stable_p95 * 1000:.1f} ms "
        f"(x{ratio:.2f} > max x{max_ratio})",
    )


def share_percent(weights: Mapping[str, float], variant: str) -> float:
    """The variant's share of the traffic, in percent (0 when every weight is 0)."""
    total = sum(weights.values())
    return 100.0 * weights.get(variant, 0.0) / total if total > 0 else 0.0


def next_step(steps: Sequence[float], current_percent: float) -> float | None:
    """The first step above the canary's current share; None at (or past) the last."""
    return next((s for s in steps if s > current_percent + _SHARE_SLACK), None)


def step_weights(
    weights: Mapping[str, float],
    configured: Mapping[str, float],
    canary: str,
    percent: float,
) -> dict[str, float]:
    """Weights that give ``canary`` ``percent`` of the traffic, the others sharing the rest
    in proportion to their current weights (or, when those are all 0, to their
    configured ones). The total stays what it was (100 when it was 0), so the figures
    read like the configured ones. A variant at 0 (a rolled-back canary) stays at 0
    unless every other one is 0 too."""
    total = sum(weights.values()) or sum(configured.values()) or 100.0
    others = {name: w for name, w in weights.items() if name != canary}
    if sum(others.values()) <= 0:
        others = {name: w for name, w in configured.items() if name != canary}
    others_total = sum(others.values())
    rest = total * (100.0 - percent) / 100.0
    result = {
        name: (rest * w / others_total if others_total > 0 else 0.0) for name, w in others.items()
    }
    result[canary] = total * percent / 100.0 if others_total > 0 else total
    return {name: _tidy(w) for name, w in result.items()}


def _tidy(weight: float) -> float:
    """Rounded to 6 decimals: shares like 1/3 stay readable in the state and the API.
    A weight above 0 stays above 0: rounded to 0, a promotion from weights like 1e-7
    (which ``/weights`` accepts) left every variant at 0 and the rollout serving no one."""
    rounded = round(weight, 6)
    return rounded if rounded > 0 or weight <= 0 else weight


def rollback_weights(
    weights: Mapping[str, float], configured_stable: Mapping[str, float], variant: str
) -> dict[str, float]:
    """``variant`` at 0, the others unchanged; if that leaves no traffic anywhere (the
    canary had been promoted to 100%), the stable variants get their configured
    weights back."""
    result = {name: (0.0 if name == variant else w) for name, w in weights.items()}
    if sum(result.values()) <= 0:
        result.update({name: w for name, w in configured_stable.items() if name != variant})
    if sum(result.values()) <= 0:  # stable configured at 0 too: share equally
        result.update({name: 1.0 for name in configured_stable if name != variant})
    return result
