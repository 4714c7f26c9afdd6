"""``POST /admin/keys`` with ``auth.enabled: false`` is refused (bug hunt: it answered
201 with a secret, models and limits that nothing checked, since every request is then
served as ``anonymous``: an operator believed a tenant restricted that was not)."""

from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.config.settings import Settings

ADMIN_KEY = "sk-admin-auth-off-0123456789"


async def test_keys_are_not_made_while_auth_is_off() -> None:
    settings = Settings(
        models=[{"name": "m", "endpoints": ["http://127.0.0.1:9"]}],
        auth={"enabled": False, "admin_key": ADMIN_KEY},
    )
    app = create_app(settings)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            made = await client.post(
                "/admin/keys", headers=headers, json={"name": "t", "models": ["m"], "rpm": 1}
            )
            listing = await client.get("/admin/keys", headers=headers)
            guessed = await client.post("/admin/keys", json={"name": "t"})
    assert made.status_code == 403, made.text
    error = made.json()["error"]
    assert error["code"] == "auth_disabled"
    assert "auth.enabled" in error["message"]
    assert "key" not in made.json()
    assert listing.status_code == 200
    assert listing.json()["data"] == []
    assert guessed.status_code == 401  # the admin key is checked first
