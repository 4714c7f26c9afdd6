"""RequestIdMiddleware serves ``/path/`` as ``/path``: hot routes included, never a redirect."""

from __future__ import annotations

import httpx
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from gateway.http.client_watch import ClientWatch
from gateway.http.hot_routes import Endpoint, HotRoutes
from gateway.http.request_id import RequestIdMiddleware
from gateway.pipeline.results import Answer, Result


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    text = f"fallback {scope['path']} {scope['raw_path'].decode()}"
    await PlainTextResponse(text)(scope, receive, send)


async def hot(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
    return Answer(b'"hot"', [])


def client() -> httpx.AsyncClient:
    app = RequestIdMiddleware(HotRoutes(fallback, {"/v1/chat/completions": Endpoint(hot)}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_trailing_slashes_are_dropped_before_routing() -> None:
    async with client() as http:
        assert (await http.post("/v1/chat/completions/")).json() == "hot"
        assert (await http.post("/v1/chat/completions//")).json() == "hot"
        assert (await http.get("/v1/models/")).text == "fallback /v1/models /v1/models"
        assert (
            await http.get("/v1/models/org/m/")
        ).text == "fallback /v1/models/org/m /v1/models/org/m"
        assert (await http.get("/")).text == "fallback / /"
        assert (await http.get("/v1/models")).text == "fallback /v1/models /v1/models"
