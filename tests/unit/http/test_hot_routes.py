"""HotRoutes and Endpoint: POST on the completion paths skips FastAPI's stack but keeps
its contract (request id, errors in OpenAI's format, other methods to FastAPI)."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from gateway.errors import RateLimitError
from gateway.http.client_watch import ClientWatch
from gateway.http.context import read_body
from gateway.http.hot_routes import Endpoint, HotRoutes
from gateway.http.request_id import RequestIdMiddleware
from gateway.pipeline.results import Answer, Result


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands for FastAPI's stack: answers everything HotRoutes passes on."""
    await PlainTextResponse(f"fallback {scope['method']} {scope['path']}")(scope, receive, send)


async def echo(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
    body = await read_body(receive, 100, None)
    watch.start()
    return Answer(b'{"echo":"' + body + b'"}', [(b"x-cache", b"MISS")], 201)


async def refuse(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
    raise RateLimitError("slow down", "requests", {"Retry-After": "3"})


async def crash(scope: Scope, receive: Receive, watch: ClientWatch) -> Result:
    raise RuntimeError("secret detail")


def client() -> httpx.AsyncClient:
    routes = {"/hot": Endpoint(echo), "/refuse": Endpoint(refuse), "/crash": Endpoint(crash)}
    app = RequestIdMiddleware(HotRoutes(fallback, routes))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_post_on_a_hot_path_reaches_its_handler_and_keeps_the_request_id() -> None:
    async with client() as http:
        response = await http.post("/hot", content=b"body", headers={"x-request-id": "r1"})
    assert response.status_code == 201
    assert response.json() == {"echo": "body"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["x-cache"] == "MISS"
    assert response.headers["x-request-id"] == "r1"


@pytest.mark.parametrize(("method", "path"), [("GET", "/hot"), ("POST", "/elsewhere")])
async def test_other_methods_and_paths_go_to_the_wrapped_app(method: str, path: str) -> None:
    async with client() as http:
        response = await http.request(method, path)
    assert response.text == f"fallback {method} {path}"


async def test_a_gateway_error_becomes_its_openai_error() -> None:
    async with client() as http:
        response = await http.post("/refuse")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert response.headers["retry-after"] == "3"
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")


async def test_an_unexpected_exception_is_a_logged_openai_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="vgate.app"):
        async with client() as http:
            response = await http.post("/crash")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_error"
    assert "secret detail" not in response.text
    assert "unhandled error on POST /crash" in caplog.text
    assert response.headers["x-request-id"].startswith("req_")
