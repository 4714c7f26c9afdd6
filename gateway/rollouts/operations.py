"""What an operator may do to a rollout, for ``/admin/rollouts`` (and so ``vgate rollout``):
read every rollout's state, set weights, promote a canary a step, roll one back.

Every input is checked here and refused in OpenAI's error format: an unknown
rollout is 404 ``rollout_not_found``; an unknown variant, a weight that is not a
finite number in [0, 1e9], weights that leave no traffic, a promotion past the
last step, a body field the action does not take (``variants`` for ``variant``:
ignored, it would have rolled back every canary) are 400. Writes go through the
shared state's compare-and-set (:meth:`RolloutBook.update`), so an operator's change
and the controller's never overwrite each other; the state backend being unreachable is 503.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from gateway.config.rollouts import MAX_WEIGHT, RolloutSettings
from gateway.errors import (
    DependencyUnavailableError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailable,
)
from gateway.rollouts.controller import RolloutController
from gateway.rollouts.state import (
    Action,
    RollbackMark,
    RolloutRecord,
    StateContended,
    Versioned,
)
from gateway.rollouts.verdict import (
    DEFAULT_STEPS,
    Breach,
    Healthy,
    Waiting,
    next_step,
    rollback_weights,
    share_percent,
    step_weights,
)

_OPERATOR_DETAIL = "rolled back by an operator"


def status(control: RolloutController) -> list[dict[str, Any]]:
    """Every rollout as ``GET /admin/rollouts`` shows it (windows: this replica's)."""
    return [_rollout_status(control, settings) for settings in control.settings.values()]


async def set_weights(control: RolloutController, rollout: str, body: Any) -> dict[str, Any]:
    """``{"weights": {variant: weight, ...}}``: the named variants get these weights (the
    others keep theirs). A rolled-back canary given a weight above 0 is re-enabled."""
    settings = _rollout(control, rollout)
    _only_field(body, "weights")
    given = _weights_of(body, settings)

    def change(record: RolloutRecord) -> RolloutRecord:
        weights = {**record.weights, **given}
        if sum(weights.values()) <= 0:
            raise InvalidRequestError(
                "these weights leave the rollout no traffic: give a variant a weight above 0",
                param="weights",
                code="invalid_weights",
            )
        rearm = [v for v, w in given.items() if w > 0]
        return _by_operator(record, weights, "set", rearm, control.wall_time())

    return await _update(control, settings, change)


async def promote(control: RolloutController, rollout: str, body: Any) -> dict[str, Any]:
    """``{"variant": canary}`` (optional with one canary): the canary moves to the next
    step of ``promote.steps`` (10/25/50/100 without ``promote:``) above its share."""
    settings = _rollout(control, rollout)
    _only_field(body, "variant")
    canary = _canary_of(body, settings)
    steps = settings.promote.steps if settings.promote is not None else DEFAULT_STEPS
    configured = {v.model: v.weight for v in settings.variants}

    def change(record: RolloutRecord) -> RolloutRecord:
        current = 0.0 if canary in record.rolled_back else share_percent(record.weights, canary)
        percent = next_step(steps, current)
        if percent is None:
            raise InvalidRequestError(
                f"canary {canary!r} is at the last step ({current:g}%) already",
                param="variant",
                code="no_next_step",
            )
        weights = step_weights(record.weights, configured, canary, percent)
        return _by_operator(record, weights, "promote", [canary], control.wall_time())

    return await _update(control, settings, change)


async def rollback(control: RolloutController, rollout: str, body: Any) -> dict[str, Any]:
    """``{"variant": canary}`` (optional: every canary): weight 0, marked as the
    operator's rollback; not promoted again until an operator sets it."""
    settings = _rollout(control, rollout)
    if body is not None and not isinstance(body, dict):  # not "every canary": a mistake
        raise InvalidRequestError('the body must be a JSON object: {"variant": "<canary>"}')
    _only_field(body, "variant")
    canaries = [_canary_of(body, settings)] if _named(body) else list(settings.canaries)
    if not canaries:
        raise InvalidRequestError(
            f"rollout {rollout!r} has no canary", param="variant", code="no_canary"
        )
    stable = {v.model: v.weight for v in settings.variants if not v.canary}

    def change(record: RolloutRecord) -> RolloutRecord:
        now = control.wall_time()
        weights, marks = dict(record.weights), dict(record.rolled_back)
        last = record.last_rollback
        for canary in canaries:
            mark = RollbackMark("operator", _OPERATOR_DETAIL, now, "operator")
            weights = rollback_weights(weights, stable, canary)
            marks[canary] = mark
            last = (canary, mark)
        return replace(
            _by_operator(record, weights, "rollback", [], now),
            rolled_back=marks,
            last_rollback=last,
        )

    answer = await _update(control, settings, change)
    for canary in canaries:
        control.count_rollback(rollout, canary, "operator")
    return answer


def _rollout(control: RolloutController, rollout: str) -> RolloutSettings:
    settings = control.settings.get(rollout)
    if settings is None:
        raise NotFoundError(f"no rollout named {rollout[:80]!r}", code="rollout_not_found")
    return settings


def _only_field(body: Any, field: str) -> None:
    """A body field other than ``field`` is refused, not ignored: ``{"variants": [...]}``
    (or ``{"canary": ...}``) sent to rollback would otherwise roll back every canary,
    and to promote would promote the only one, whatever it names."""
    if not isinstance(body, dict):
        return
    unknown = [str(name) for name in body if name != field]
    if unknown:
        raise InvalidRequestError(
            f"unknown field{'s' if len(unknown) > 1 else ''} {_listed(unknown)} in the body: "
            f"it takes only {field!r}",
            param=unknown[0][:80],
        )


def _listed(names: list[str], most: int = 5) -> str:
    """``names`` quoted and bounded, for a message (a hostile body may hold thousands)."""
    shown = ", ".join(repr(name[:80]) for name in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _weights_of(body: Any, settings: RolloutSettings) -> dict[str, float]:
    weights = body.get("weights") if isinstance(body, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise InvalidRequestError(
            'the body must be {"weights": {"<variant>": <weight>, ...}}', param="weights"
        )
    known = {v.model for v in settings.variants}
    unknown = [str(variant) for variant in weights if variant not in known]
    if unknown:
        raise InvalidRequestError(
            f"{_listed(unknown)} {'is not a variant' if len(unknown) == 1 else 'are not variants'}"
            f" of rollout {settings.model!r} (variants: {', '.join(sorted(known))})",
            param="weights",
            code="unknown_variant",
        )
    given: dict[str, float] = {}
    for variant, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise InvalidRequestError(f"weights.{variant}: not a number", param="weights")
        if not (math.isfinite(weight) and 0 <= weight <= MAX_WEIGHT):
            raise InvalidRequestError(
                f"weights.{variant}: a weight must be between 0 and {MAX_WEIGHT:g}",
                param="weights",
                code="invalid_weights",
            )
        given[variant] = float(weight) + 0.0  # -0.0 is stored (and shown) as 0.0
    return given


def _named(body: Any) -> bool:
    return isinstance(body, dict) and body.get("variant") is not None


def _canary_of(body: Any, settings: RolloutSettings) -> str:
    """The canary the body names, or the rollout's only one."""
    if body is not None and not isinstance(body, dict):
        raise InvalidRequestError('the body must be a JSON object: {"variant": "<canary>"}')
    canaries = settings.canaries
    if not isinstance(body, dict) or body.get("variant") is None:
        if len(canaries) == 1:
            return canaries[0]
        raise InvalidRequestError(
            f"rollout {settings.model!r} has {len(canaries)} canaries: name one as 'variant'",
            param="variant",
            code="no_canary" if not canaries else "variant_required",
        )
    variant = body["variant"]
    if not isinstance(variant, str) or variant not in canaries:
        raise InvalidRequestError(
            f"{str(variant)[:80]!r} is not a canary of rollout {settings.model!r}",
            param="variant",
            code="unknown_variant",
        )
    return variant


def _by_operator(
    record: RolloutRecord,
    weights: Mapping[str, float],
    action: Action,
    rearm: list[str],
    now: float,
) -> RolloutRecord:
    """The record with the operator's weights; variants in ``rearm`` lose their rollback
    mark and get their windows cleared on every replica."""
    return replace(
        record,
        weights=dict(weights),
        changed_at=now,
        changed_by="operator",
        action=action,
        rolled_back={v: m for v, m in record.rolled_back.items() if v not in rearm},
        rearmed_at={
            **record.rearmed_at,
            **{v: now for v in rearm if v in record.rolled_back},
        },
    )


async def _update(
    control: RolloutController,
    settings: RolloutSettings,
    change: Callable[[RolloutRecord], RolloutRecord | None],
) -> dict[str, Any]:
    try:
        await control.book.update(settings.model, change)
    except StoreUnavailable:
        raise DependencyUnavailableError(
            "The rollout state is unreachable; try again shortly.", code="rollout_state_unavailable"
        ) from None
    except StateContended:  # other updates of the same rollout kept winning the race
        raise DependencyUnavailableError(
            "The rollout's state is being changed by other requests; try again.",
            code="rollout_state_busy",
        ) from None
    return _rollout_status(control, settings)


def _rollout_status(control: RolloutController, settings: RolloutSettings) -> dict[str, Any]:
    versioned = control.book.current(settings.model)
    assert versioned is not None
    record = versioned.record
    now = control.monotonic()
    stable = control.windows.stats(settings.model, settings.stable, now)
    return {
        "model": settings.model,
        "version": versioned.version,
        "variants": list(_variants(control, settings, versioned)),
        "stable_window": stable.public(),
        "changed_at": record.changed_at,
        "changed_by": record.changed_by,
        "last_action": record.action,
        "last_rollback": None
        if record.last_rollback is None
        else {"variant": record.last_rollback[0], **record.last_rollback[1].public()},
        "slo": settings.slo.model_dump(),
        "promote": None if settings.promote is None else settings.promote.model_dump(),
        "sticky": settings.sticky,
    }


def _variants(
    control: RolloutController, settings: RolloutSettings, versioned: Versioned
) -> Iterator[dict[str, Any]]:
    record = versioned.record
    now = control.monotonic()
    for variant in settings.variants:
        name = variant.model
        row: dict[str, Any] = {
            "model": name,
            "canary": variant.canary,
            "weight": record.weights.get(name, 0.0),
            "share_percent": round(share_percent(record.weights, name), 3),
            "configured_weight": variant.weight,
            "window": control.windows.stats(settings.model, (name,), now).public(),
        }
        if variant.canary:
            mark = record.rolled_back.get(name)
            row["rolled_back"] = None if mark is None else mark.public()
            row["state"], row["healthy_for_s"] = _canary_state(control, settings.model, name, mark)
            if settings.promote is not None:
                row["next_step"] = next_step(settings.promote.steps, row["share_percent"])
        yield row


def _canary_state(
    control: RolloutController, rollout: str, canary: str, mark: RollbackMark | None
) -> tuple[str, float | None]:
    """``rolled_back``, ``off`` (weight 0), ``breach``, ``healthy`` (and for how long),
    ``waiting`` (too few requests) or ``starting`` (not judged yet)."""
    if mark is not None:
        return "rolled_back", None
    if control.weights(rollout).get(canary, 0.0) <= 0:
        return "off", None
    watch = control.watch(rollout, canary)
    verdict = None if watch is None else watch.verdict
    if isinstance(verdict, Healthy) and watch is not None and watch.healthy_since is not None:
        return "healthy", round(control.monotonic() - watch.healthy_since, 3)
    if isinstance(verdict, Breach):
        return "breach", None
    if isinstance(verdict, Waiting):
        return "waiting", None
    return "starting", None
