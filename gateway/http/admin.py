"""``/admin/keys``: make, list and revoke API keys over HTTP, behind ``auth.admin_key``.

``POST /admin/keys`` (body: name, models, rpm, tpm, max_concurrent, expires)
answers 201 with the secret, shown this once; ``GET /admin/keys`` lists keys
without secrets; ``DELETE /admin/keys/{name}`` revokes one on every replica.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.key_admin import KeyRequestError, NewKey, create_key, list_keys, shown_name
from gateway.auth.keys import KeyStore
from gateway.config.rollouts import pin_problem
from gateway.errors import (
    DependencyUnavailableError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    StoreUnavailable,
)
from gateway.http.admin_key import ADMIN_API_OFF, audit, require_admin_key
from gateway.http.context import app_state, read_body
from gateway.http.rollouts_admin import router as rollouts_router
from gateway.http.state import AppState

router = APIRouter()


def _authorized_store(request: Request) -> tuple[AppState, KeyStore]:
    require_admin_key(request, ADMIN_API_OFF)
    state = app_state(request)
    if state.keys is None:
        raise PermissionDeniedError(ADMIN_API_OFF, code="admin_disabled")
    return state, state.keys


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def _unavailable() -> DependencyUnavailableError:
    return DependencyUnavailableError(
        "The key store is unreachable; try again shortly.", code="key_store_unavailable"
    )


async def create(request: Request) -> Response:
    state, store = _authorized_store(request)
    if not state.settings.auth.enabled:
        raise PermissionDeniedError(
            "auth.enabled is false: every request is served without a key, so a key made "
            "here would restrict nothing; set auth.enabled: true to use keys.",
            code="auth_disabled",
        )
    raw = await read_body(
        request.receive, state.settings.server.max_body_bytes, request.headers.get("content-length")
    )
    try:
        new = NewKey.parse(orjson.loads(raw))
        problem = pin_problem(state.settings.rollouts, new.variants or {})
        if problem is not None:
            raise KeyRequestError(problem)
        secret, record = await create_key(store, new, state.service.authenticator.names())
    except orjson.JSONDecodeError:
        raise InvalidRequestError("request body is not valid JSON") from None
    except KeyRequestError as exc:
        raise InvalidRequestError(str(exc)) from None
    except StoreUnavailable:
        raise _unavailable() from None
    await state.service.authenticator.refresh()
    audit(request, "key %r created: %s", record.name, orjson.dumps(record.public()).decode())
    return _json(record.public() | {"key": secret}, 201)


async def list_all(request: Request) -> Response:
    _, store = _authorized_store(request)
    try:
        return _json({"object": "list", "data": await list_keys(store)})
    except StoreUnavailable:
        raise _unavailable() from None


async def revoke(request: Request) -> Response:
    state, store = _authorized_store(request)
    name = request.path_params["name"]
    try:
        found = await store.revoke(name)  # a stored key a config key's name shadows, too
    except StoreUnavailable:
        raise _unavailable() from None
    if not found and name in _config_key_names(state):
        raise InvalidRequestError(
            f"{name!r} is declared in the config (auth.keys): remove it there",
            code="key_in_config",
        )
    if not found:  # the name echoed as far as a key's name can go (64 characters)
        raise NotFoundError(f"no key named {shown_name(name)!r}", code="key_not_found")
    await state.service.authenticator.refresh()
    audit(request, "key %r revoked", name)
    return _json({"name": name, "revoked": True})


def _config_key_names(state: AppState) -> set[str]:
    return {key.name for key in state.settings.auth.keys}


router.add_route("/admin/keys", create, methods=["POST"])
router.add_route("/admin/keys", list_all, methods=["GET"])
router.add_route("/admin/keys/{name}", revoke, methods=["DELETE"])
router.include_router(rollouts_router)  # /admin/rollouts
