"""The ``rollouts:`` section refuses numbers that would turn the split upside down:
an infinite weight (YAML ``.inf``, or ``1e400``) gave its variant none of the traffic
and the canary all of it (``inf - inf`` is NaN on the weight line); two weights of
1e308 add up to one. Weights stop at 1e9, as ``/admin/rollouts`` takes them."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config.rollouts import RolloutSettings


def rollout(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "r",
        "variants": [{"model": "a", "weight": 90}, {"model": "b", "weight": 10, "canary": True}],
    }
    return base | fields


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), 1e400, 1e308])
def test_a_variant_weight_must_be_finite(weight: float) -> None:
    variants = [{"model": "a", "weight": weight}, {"model": "b", "weight": 10, "canary": True}]
    with pytest.raises(ValidationError):
        RolloutSettings.model_validate(rollout(variants=variants))


@pytest.mark.parametrize(
    "fields",
    [
        {"slo": {"window_s": float("inf")}},
        {"slo": {"max_ttft_p95_ratio": float("nan")}},
        {"promote": {"steps": [10, 100], "healthy_for_s": float("inf")}},
        {"shadow": {"model": "c", "share": float("nan")}},
    ],
)
def test_rollout_numbers_must_be_finite(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RolloutSettings.model_validate(rollout(**fields))


def test_finite_numbers_still_load() -> None:
    settings = RolloutSettings.model_validate(rollout(slo={"window_s": 30}))
    assert [v.weight for v in settings.variants] == [90.0, 10.0]
