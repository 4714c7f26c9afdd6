"""HotRoutes: POST on the completion paths skips FastAPI's stack but keeps its contract."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from gateway.errors import RateLimitError
from gateway.http.hot_routes import HotRoutes
from gateway.http.request_id import RequestIdMiddleware


async def fallback(scope: Scope, receive: Receive, send: Send) -> None:
    """Stands for FastAPI's stack: answers everything HotRoutes passes on."""
    await PlainTextResponse(f"fallback {scope['method']} {scope['path']}")(scope, receive, send)


async def echo(request: Request) -> Response:
    return PlainTextResponse(b"hot " + await request.body())


async def refuse(request: Request) -> Response:
    raise RateLimitError("slow down", "requests", {"Retry-After": "3"})


async def crash(request: Request) -> Response:
    raise RuntimeError("secret detail")


def client() -> httpx.AsyncClient:
    routes = {"/hot": echo, "/refuse": refuse, "/crash": crash}
    app = RequestIdMiddleware(HotRoutes(fallback, routes))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_post_on_a_hot_path_reaches_its_handler_and_keeps_the_request_id() -> None:
    async with client() as http:
        response = await http.post("/hot", content=b"body", headers={"x-request-id": "r1"})
    assert response.text == "hot body"
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
