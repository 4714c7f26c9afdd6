"""The ``rollouts:`` section: a model name clients use, served by weighted variants.

Each variant is a full entry of ``models:`` (managed engines or endpoints). The
spellings follow issue #17 so that users' files keep working::

    rollouts:
      - model: smollm2                    # what clients ask for
        variants:
          - {model: smollm2-fp32, weight: 90}
          - {model: smollm2-awq, weight: 10, canary: true}
        shadow: {model: smollm2-next, share: 0.2}   # optional
        sticky: user                      # user | session | key | none
        slo: {max_error_rate: 0.02, max_ttft_p95_ratio: 1.5, max_itl_p95_ratio: 1.5,
              window_s: 120, min_requests: 50}
        promote: {steps: [10, 25, 50, 100], healthy_for_s: 300}   # optional

Cross-checks against ``models:`` (variants exist, the rollout's name is not itself a
model) live in :class:`gateway.config.settings.Settings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from gateway.config.sections import _Section

MAX_WEIGHT = 1e9
"""The largest weight (here and in ``/admin/rollouts``): the sum of a rollout's
weights stays finite, so the weighted choice stays what the weights say."""


class _Finite(_Section):
    """A rollout section: every number finite (``.inf`` would break the arithmetic of
    the weighted choice, the windows and the promotion clock)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class VariantSettings(_Finite):
    """One way a rollout's requests may be served: a model of ``models:`` and its share."""

    model: str = Field(min_length=1, description="A name from `models:`.")
    weight: float = Field(
        ge=0, le=MAX_WEIGHT, description="Relative share of the traffic (0: none)."
    )
    canary: bool = Field(
        False, description="Compared with the stable variants; rolled back on an SLO breach."
    )


class ShadowSettings(_Finite):
    """A copy of a share of the requests, sent to another model; its answers are dropped."""

    model: str = Field(min_length=1, description="A name from `models:`.")
    share: float = Field(gt=0, le=1, description="The fraction of requests copied.")
    max_concurrent: int = Field(
        8, ge=1, description="Copies in flight at once; beyond it a copy is shed, never waited for."
    )


class SloSettings(_Finite):
    """When a canary is rolled back: compared with the stable variants over a window."""

    max_error_rate: float = Field(0.02, ge=0, le=1, description="Canary's 5xx/failure share.")
    max_ttft_p95_ratio: float = Field(1.5, gt=0, description="Canary TTFT p95 / stable's.")
    max_itl_p95_ratio: float = Field(1.5, gt=0, description="Canary ITL p95 / stable's.")
    window_s: float = Field(120.0, gt=0, description="The sliding window compared.")
    min_requests: int = Field(50, ge=1, description="Canary requests in the window before judging.")


class PromoteSettings(_Finite):
    """Automatic promotion: a canary healthy for ``healthy_for_s`` moves to the next step."""

    steps: tuple[float, ...] = Field(
        min_length=1, description="The canary's successive weights, in percent of the traffic."
    )
    healthy_for_s: float = Field(300.0, gt=0, description="Healthy time needed per step.")

    @model_validator(mode="after")
    def _increasing(self) -> PromoteSettings:
        steps = self.steps
        if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError("promote.steps must increase strictly, each in (0, 100]")
        return self


class RolloutSettings(_Finite):
    model: str = Field(min_length=1, description="The name clients put in `model`.")
    variants: tuple[VariantSettings, ...] = Field(min_length=1)
    shadow: ShadowSettings | None = None
    sticky: Literal["user", "session", "key", "none"] = Field(
        "none", description="Keep a conversation on one variant by this, hashed."
    )
    slo: SloSettings = SloSettings()
    promote: PromoteSettings | None = None

    @model_validator(mode="after")
    def _sane(self) -> RolloutSettings:
        names = [v.model for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"rollout {self.model!r}: a variant is listed twice")
        if self.model in names:
            raise ValueError(f"rollout {self.model!r}: a variant cannot be the rollout itself")
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError(f"rollout {self.model!r}: the weights add up to 0")
        if self.shadow is not None and self.shadow.model in (self.model, *names):
            raise ValueError(f"rollout {self.model!r}: the shadow must be another model")
        if self.promote is not None and not any(v.canary for v in self.variants):
            raise ValueError(f"rollout {self.model!r}: promote needs a variant with canary: true")
        return self

    @property
    def canaries(self) -> tuple[str, ...]:
        return tuple(v.model for v in self.variants if v.canary)

    @property
    def stable(self) -> tuple[str, ...]:
        return tuple(v.model for v in self.variants if not v.canary)


def pin_problem(rollouts: Sequence[RolloutSettings], pins: Mapping[str, str]) -> str | None:
    """Why a key's variant pins (``{rollout: variant}``) cannot be kept, or None: each
    must name a configured rollout and one of its variants (a pin to anything else
    would be ignored at every request, silently)."""
    variants = {r.model: [v.model for v in r.variants] for r in rollouts}
    for rollout, variant in pins.items():
        if rollout not in variants:
            return f"variants: {rollout[:64]!r} is not a rollout"
        if variant not in variants[rollout]:
            return f"variants: {variant[:64]!r} is not a variant of rollout {rollout[:64]!r}"
    return None
