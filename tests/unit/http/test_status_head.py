"""``HEAD /status/events`` answers its head and holds no stream's place (bug hunt: it
held one for the stream's whole lifetime, 20 s, sending nothing; eight of them, the
cap per worker, kept every status page out)."""

from __future__ import annotations

import asyncio

import httpx

from gateway.app import create_app
from gateway.config.settings import Settings
from gateway.http.status_feed import MAX_STREAMS

ADMIN_KEY = "sk-admin-status-0123456789"


async def test_head_holds_no_place_and_get_still_streams() -> None:
    settings = Settings(
        models=[{"name": "m", "endpoints": ["http://127.0.0.1:9"]}],
        auth={"enabled": True, "admin_key": ADMIN_KEY},
    )
    app = create_app(settings)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with app.router.lifespan_context(app):
        feed = app.state.vgate.status
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for _ in range(MAX_STREAMS + 1):
                head = await asyncio.wait_for(client.head("/status/events", headers=headers), 5)
                assert head.status_code == 200
                assert head.headers["content-type"].startswith("text/event-stream")
                assert feed.open_streams == 0
            refused = await client.head("/status/events")
            assert refused.status_code == 401  # the admin key is still wanted
            assert feed.open_stream()  # a GET's place is still there to take
            feed.close_stream()
