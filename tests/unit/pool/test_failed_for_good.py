"""Which models have failed for good, as the registry watcher tells the pool, and what
readiness and the forwarder make of it (the rule: no configured endpoint, and every
engine the registry holds for the model, of any supervisor, ``failed``, or ``stopped``
with at least one ``failed``); a LoRA adapter of such engines fails with them."""

from __future__ import annotations

from engines.registry import EngineRecord, EngineState, InProcessRegistry
from gateway.pool.engine_pool import EnginePool
from gateway.pool.readiness import Readiness
from gateway.pool.sources import RegistryWatcher


def record(
    engine_id: str, model: str, state: EngineState, adapters: tuple[str, ...] = ()
) -> EngineRecord:
    url = f"http://10.0.0.1/{engine_id}"
    return EngineRecord(engine_id, model, url, state, 0.0, "sup", adapters=adapters)


async def watched(
    records: list[EngineRecord], static: dict[str, list[str]] | None = None
) -> EnginePool:
    static = static if static is not None else {"a": [], "b": []}
    registry = InProcessRegistry()
    for r in records:
        await registry.publish(r)
    pool = EnginePool(static)
    await RegistryWatcher(registry, pool, static, {"served-a": "a"}).refresh()
    return pool


async def test_a_model_whose_every_engine_failed_has_failed_for_good() -> None:
    pool = await watched([record("1", "served-a", "failed"), record("2", "served-a", "failed")])
    assert pool.failed_for_good("a") and pool.failed_models() == {"a"}
    assert not pool.failed_for_good("b")  # no engine at all yet: not failed


async def test_one_engine_that_may_still_run_keeps_the_model_alive() -> None:
    for state in ("starting", "restarting", "ready", "draining"):
        pool = await watched([record("1", "served-a", "failed"), record("2", "served-a", state)])
        assert not pool.failed_for_good("a"), state


async def test_a_configured_endpoint_keeps_the_model_alive() -> None:
    pool = await watched([record("1", "served-a", "failed")], {"a": ["http://static:8000"]})
    assert not pool.failed_for_good("a")


async def test_ready_unless_every_model_failed_for_good() -> None:
    half = await watched([record("1", "served-a", "failed"), record("2", "b", "ready")])
    report = await Readiness(half, lambda: 1, None, 0.25).check()
    assert report.ready and report.failed_models == ("a",)
    dead = await watched([record("1", "served-a", "failed"), record("2", "b", "failed")])
    report = await Readiness(dead, lambda: 2, None, 0.25).check()
    assert not report.ready and report.failed_models == ("a", "b")


async def test_failed_and_stopped_engines_fail_the_model_for_good() -> None:
    pool = await watched([record("1", "served-a", "failed"), record("2", "served-a", "stopped")])
    assert pool.failed_for_good("a") and pool.failed_models() == {"a"}
    report = await Readiness(pool, lambda: 1, None, 0.25).check()
    assert report.failed_models == ("a",)


async def test_engines_all_stopped_are_a_shutdown_not_a_failure() -> None:
    pool = await watched([record("1", "served-a", "stopped"), record("2", "served-a", "stopped")])
    assert not pool.failed_for_good("a") and pool.failed_models() == frozenset()


async def test_an_adapter_of_failed_engines_is_unavailable_not_unknown() -> None:
    pool = await watched(
        [
            record("1", "served-a", "failed", adapters=("a-lora",)),
            record("2", "served-a", "stopped", adapters=("a-lora",)),
            record("3", "b", "ready", adapters=("b-lora",)),
        ]
    )
    assert pool.has_model("a-lora") and pool.failed_for_good("a-lora")
    assert pool.snapshot("a-lora") == ()
    assert pool.failed_models() == {"a", "a-lora"}
    assert pool.has_model("b-lora") and not pool.failed_for_good("b-lora")


async def test_an_adapter_another_live_engine_serves_is_not_failed() -> None:
    pool = await watched(
        [
            record("1", "served-a", "failed", adapters=("shared-lora",)),
            record("2", "b", "ready", adapters=("shared-lora",)),
        ]
    )
    assert pool.failed_for_good("a") and not pool.failed_for_good("shared-lora")
    assert [view.url for view in pool.snapshot("shared-lora")] == ["http://10.0.0.1/2"]
