"""Error responses produced inside the app keep the OpenAI shape and the request id."""

from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.config.settings import Settings


async def test_unexpected_exception_is_an_openai_500_with_request_id() -> None:
    app = create_app(Settings())

    async def broken() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/broken", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/broken", headers={"x-request-id": "abc"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "internal_error"
    assert "boom" not in response.text
    assert response.headers["x-request-id"] == "abc"


async def test_unknown_route_is_openai_404_with_generated_request_id() -> None:
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert response.headers["x-request-id"].startswith("req_")
