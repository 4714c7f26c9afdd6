"""An engine's error never shows the name the model is served under: a client that
asked for an alias (``upstream_model``) or a rollout reads its own name in the
message (before: "The model `<served name>` does not exist.", the operator's name)."""

from __future__ import annotations

import orjson
import pytest

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
