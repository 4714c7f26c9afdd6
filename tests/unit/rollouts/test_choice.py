"""Variant choice: weights, weight 0, stickiness, A/B pins, hostile inputs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import pytest

from gateway.config.rollouts import RolloutSettings
from gateway.errors import NoEngineAvailableError
from gateway.rollouts.choice import VariantChooser, sticky_point
from gateway.rollouts.contracts import ConfigWeights


def _rollout(sticky: str = "none", **weights: float) -> RolloutSettings:
    variants = [{"model": m, "weight": w} for m, w in (weights or {"a": 80, "b": 20}).items()]
    return RolloutSettings.model_validate({"model": "r", "variants": variants, "sticky": sticky})


class LiveWeights:
    def __init__(self, weights: Mapping[str, float]) -> None:
        self.current = dict(weights)

    def weights(self, rollout: str) -> Mapping[str, float]:
        return self.current


def test_weights_split_the_draws() -> None:
    draws = iter(i / 1000 for i in range(1000))
    chooser = VariantChooser([_rollout()], ConfigWeights([_rollout()]), lambda: next(draws))
    seen = Counter(chooser.choose("r") for _ in range(1000))
    assert seen == Counter({"a": 800, "b": 200})


def test_a_weight_0_variant_is_never_chosen_and_all_zero_is_503() -> None:
    live = LiveWeights({"a": 0, "b": 5})
    chooser = VariantChooser([_rollout()], live)
    assert {chooser.choose("r") for _ in range(200)} == {"b"}
    live.current = {"a": 0, "b": 0}
    with pytest.raises(NoEngineAvailableError):
        chooser.choose("r")


def test_weights_of_unknown_variants_or_bad_values_are_ignored() -> None:
    live = LiveWeights({"a": float("nan"), "b": -3, "intruder": 100, "c": 1})
    chooser = VariantChooser([_rollout(a=1, b=1, c=1)], live)
    assert {chooser.choose("r") for _ in range(100)} == {"c"}


def test_sticky_user_is_stable_and_spreads() -> None:
    rollout = _rollout("user", a=50, b=50)
    chooser = VariantChooser([rollout], ConfigWeights([rollout]))
    picks = {u: chooser.choose("r", user=u) for u in (f"user-{n}" for n in range(200))}
    assert all(chooser.choose("r", user=u) == v for u, v in picks.items())
    assert 60 < Counter(picks.values())["a"] < 140
    # Not a string, or empty: a random draw instead (never an error).
    for hostile in (None, "", 7, ["x"], {"a": 1}):
        assert chooser.choose("r", user=hostile) in ("a", "b")


def test_sticky_session_and_key() -> None:
    by_session = _rollout("session", a=1, b=1)
    by_key = _rollout("key", a=1, b=1)
    session = VariantChooser([by_session], ConfigWeights([by_session]))
    key = VariantChooser([by_key], ConfigWeights([by_key]))
    assert len({session.choose("r", session="s-1", user=str(n)) for n in range(30)}) == 1
    assert len({key.choose("r", key_name="team-a", session=str(n)) for n in range(30)}) == 1


def test_a_pinned_key_gets_its_variant_even_at_weight_0() -> None:
    live = LiveWeights({"a": 1, "b": 0})
    chooser = VariantChooser([_rollout()], live)
    assert chooser.choose("r", pinned={"r": "b"}) == "b"
    # A pin to something that is not a variant of this rollout is ignored.
    assert chooser.choose("r", pinned={"r": "elsewhere"}) == "a"


def test_sticky_points_are_stable_bounded_and_per_rollout() -> None:
    assert sticky_point("r", "alice") == sticky_point("r", "alice")
    assert sticky_point("r", "alice") != sticky_point("other", "alice")
    huge = "x" * 10_000_000
    assert 0.0 <= sticky_point("r", huge) < 1.0
    assert 0.0 <= sticky_point("r", "\ud800") < 1.0  # a lone surrogate from JSON
