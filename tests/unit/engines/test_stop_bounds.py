"""A replica's stop fits the bounds set around it: the supervisor's per-replica bound
(drain + stop timeouts + ``_STOP_MARGIN_S``) covers :meth:`EngineProcess.stop`'s own
overrun (reap, log settling twice) and the two registry calls around it (the margin
was 10 s, the worst case past the timeouts 21 s); the gateway's backstop covers that
and a registry removal; the engine pods' grace period covers it all."""

from __future__ import annotations

import re
from pathlib import Path

import engines.liveness as liveness
import engines.supervisor as supervisor
from engines.process import STOP_OVERRUN_S
from engines.spec import HealthPolicy
from gateway.app import ENGINE_STOP_SLACK_S

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "base"


def _worst_past_timeouts() -> float:
    registry_calls = 2 * supervisor._REGISTRY_CALL_S  # draining, stopped
    return STOP_OVERRUN_S + registry_calls + liveness._METRICS_TIMEOUT_S


def test_the_supervisors_margin_covers_a_stops_worst_case() -> None:
    assert _worst_past_timeouts() <= supervisor._STOP_MARGIN_S


def test_the_gateways_backstop_comes_after_the_supervisors_bound() -> None:
    assert ENGINE_STOP_SLACK_S >= supervisor._STOP_MARGIN_S + supervisor._REGISTRY_CALL_S


def test_the_engine_pods_grace_period_covers_a_drain_and_stop() -> None:
    grace = re.search(
        r"terminationGracePeriodSeconds:\s*(\d+)", (DEPLOY / "engine-statefulset.yaml").read_text()
    )
    drain = re.search(r"drain_timeout_s:\s*(\d+)", (DEPLOY / "engine.yaml").read_text())
    assert grace is not None and drain is not None
    stop = HealthPolicy().stop_timeout_s
    bound = float(drain.group(1)) + stop + supervisor._STOP_MARGIN_S + supervisor._REGISTRY_CALL_S
    assert float(grace.group(1)) > bound
