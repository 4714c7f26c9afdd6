"""EngineModels: the engines' model cards, by client-facing name, learnt in the background."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from gateway.pool.engine_pool import EnginePool
from gateway.pool.model_info import EngineModels, ModelFacts

A, B = "http://a:1", "http://b:1"


class Engines:
    """Engines' ``/v1/models`` answers by URL (None: no answer), and what was asked."""

    def __init__(self, lists: dict[str, object | None]) -> None:
        self.lists = lists
        self.asked: list[str] = []

    async def fetch_text(self, url: str, headers: Mapping[str, str] | None = None) -> str | None:
        self.asked.append(url)
        base = url.removesuffix("/v1/models")
        listing = self.lists.get(base)
        return None if listing is None else orjson.dumps(listing).decode()


def card(id_: str, root: object = None, parent: object = None, length: object = 2048) -> dict:  # type: ignore[type-arg]
    return {"id": id_, "object": "model", "root": root, "parent": parent, "max_model_len": length}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_facts_by_client_name_with_engine_names_replaced() -> None:
    pool = EnginePool({"chat": [A], "adapter": [A], "alias": [A]})
    engines = Engines(
        {A: {"data": [card("chat", root="chat"), card("adapter", "/lora/x", "chat")]}}
    )  # vLLM reports an adapter's directory as its root: never shown to clients
    info = EngineModels(pool, engines, {"alias": "chat"})
    await info.refresh()
    assert info.facts["chat"] == ModelFacts(2048, "chat", None)
    assert info.facts["adapter"] == ModelFacts(2048, "adapter", "chat")
    assert info.facts["alias"] == ModelFacts(2048, "alias", None)  # root renamed too
    assert info.facts["adapter"].fields() == {
        "parent": "chat",
        "root": "adapter",
        "max_model_len": 2048,
    }
    assert engines.asked == [f"{A}/v1/models"]  # one read per engine, whatever it serves


async def test_reads_when_engines_join_or_are_due_or_did_not_answer() -> None:
    clock = Clock()
    pool = EnginePool({"chat": [A]})
    engines = Engines({A: None})
    info = EngineModels(pool, engines, {}, refresh_s=60, clock=clock)
    await info.refresh()
    assert info.facts == {} and info.version == 0
    engines.lists[A] = {"data": [card("chat")]}
    await info.refresh()  # no answer last time: asked again at once
    assert info.facts["chat"].max_model_len == 2048 and info.version == 1
    engines.asked.clear()
    await info.refresh()
    assert engines.asked == []  # nothing due: the step costs nothing
    pool.set_endpoints("chat", [A, B])
    engines.lists[B] = {"data": [card("chat", length=999)]}
    await info.refresh()
    assert engines.asked == [f"{B}/v1/models"]  # only the engine that joined
    clock.now = 61
    engines.lists[A] = {"data": [card("chat", length=4096)]}
    await info.refresh()
    assert info.facts["chat"].max_model_len == 4096 and info.version == 2
    pool.remove_model("chat")
    await info.refresh()
    assert info.facts == {} and info.version == 3


async def test_garbage_from_an_engine_counts_as_no_answer() -> None:
    pool = EnginePool({"chat": [A]})
    for garbage in ([1, 2], {"data": "x"}, {"data": [{"id": 5}, "x", card("chat", 7, 8, True)]}):
        info = EngineModels(pool, Engines({A: garbage}), {})
        await info.refresh()
        assert info.facts.get("chat", ModelFacts()) == ModelFacts()


async def test_a_hub_id_root_is_kept() -> None:
    pool = EnginePool({"chat": [A]})
    engines = Engines({A: {"data": [card("chat", root="HuggingFaceTB/SmolLM2-135M")]}})
    info = EngineModels(pool, engines, {})
    await info.refresh()
    assert info.facts["chat"].root == "HuggingFaceTB/SmolLM2-135M"
