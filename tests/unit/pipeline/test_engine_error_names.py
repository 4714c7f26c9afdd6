"""An engine's error never shows the name the model is served under: a client that
asked for an alias (``upstream_model``) or a rollout reads its own name in the
message (before: "The model `<served name>` does not exist.", the operator's name)."""

from __future__ import annotations

import orjson
import pytest

from gateway.config.models import ModelSettings, engine_names_of, renamed_for
from gateway.errors import UpstreamStatusError
from gateway.upstream.fake import Scripted
from tests.unit.pipeline.world import ENGINES, chat_body, world

SERVED = "org/internal-llm-v7"
ALIAS = "m"  # the world's model name


@pytest.mark.parametrize("stream", [False, True])
async def test_the_served_name_in_an_engine_error_is_the_clients(stream: bool) -> None:
    missing = {"error": {"message": f"The model `{SERVED}` does not exist.", "code": 404}}
    w = world(
        lambda _: Scripted(status=404, body=orjson.dumps(missing)),
        models=[{"name": ALIAS, "endpoints": list(ENGINES), "upstream_model": SERVED}],
    )
    with pytest.raises(UpstreamStatusError) as caught:
        await w.ask(chat_body(stream=stream))
    error = orjson.loads(caught.value.body())["error"]
    assert error["message"] == f"The model `{ALIAS}` does not exist."
    assert error["code"] == "model_not_found"
    w.assert_nothing_held()


SOURCE = "/srv/weights/internal-llm-v7"
ADAPTER_PATH = "/srv/adapters/sql-lora"


@pytest.mark.parametrize("stream", [False, True])
async def test_the_engines_model_and_adapter_directories_never_show(stream: bool) -> None:
    """A managed engine's model directory (``source``) and a LoRA adapter's directory
    are written as the client's name too, wherever the message has them; the served
    name in every form, not only between backticks."""
    message = (
        f"Loading {SOURCE}/config.json failed for internal-llm-v7 ('internal-llm-v7'); "
        f"adapter {ADAPTER_PATH}: rank too large. internal-llm-v7x is another model."
    )
    failed = {"error": {"message": message, "code": 400}}
    engine = {
        "kind": "stub",
        "source": SOURCE,
        "lora_modules": [{"name": "sql", "path": ADAPTER_PATH}],
    }
    w = world(
        lambda _: Scripted(status=400, body=orjson.dumps(failed)),
        models=[
            {
                "name": ALIAS,
                "endpoints": list(ENGINES),
                "upstream_model": "internal-llm-v7",
                "engine": engine,
            },
        ],
    )
    with pytest.raises(UpstreamStatusError) as caught:
        await w.ask(chat_body(stream=stream))
    error = orjson.loads(caught.value.body())["error"]
    assert error["message"] == (
        f"Loading {ALIAS}/config.json failed for {ALIAS} ('{ALIAS}'); "
        "adapter <path>: rank too large. internal-llm-v7x is another model."
    )  # another model's adapter directory is a file path of the engine's: never shown
    w.assert_nothing_held()


def test_each_model_and_adapter_knows_what_to_hide() -> None:
    managed = ModelSettings.model_validate(
        {"name": "pub", "upstream_model": "served", "engine": {"kind": "stub",
         "source": SOURCE, "lora_modules": [{"name": "sql", "path": ADAPTER_PATH}]}}
    )  # fmt: skip
    assert managed.engine_names() == {"pub": ("served", SOURCE), "sql": (ADAPTER_PATH,)}
    embedded = ModelSettings.model_validate({"name": "pub", "engine": {"kind": "stub"}})
    assert embedded.engine_names() == {}  # "default" is a keyword, not a path: not hidden
    assert ModelSettings.model_validate({"name": "pub", "endpoints": []}).engine_names() == {}


def test_renamed_for_lists_the_engine_side_names_then_the_clients() -> None:
    """What every route (chat, Responses, vLLM's model-scoped routes) hides: the
    model's engine-side names and the served name, once each, never the client's own."""
    managed = ModelSettings.model_validate(
        {"name": "pub", "upstream_model": "served", "engine": {"kind": "stub",
         "source": SOURCE, "lora_modules": [{"name": "sql", "path": ADAPTER_PATH}]}}
    )  # fmt: skip
    names = engine_names_of({"pub": managed})
    assert renamed_for(names, "pub", "served", "pub") == ("served", SOURCE, "pub")
    assert renamed_for(names, "sql", "sql", "sql") == (ADAPTER_PATH, "sql")
    assert renamed_for(names, "other", "other", "other") is None
    assert renamed_for(names, "other", "other-served", "other") == ("other-served", "other")
