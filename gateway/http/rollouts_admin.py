"""``/admin/rollouts``: see and steer rollouts over HTTP, behind ``auth.admin_key``.

``GET /admin/rollouts`` lists every rollout: its variants with their weights, shares
and this replica's window statistics, each canary's state (healthy and for how
long, waiting for requests, rolled back and why), the last change and the last
rollback. ``POST /admin/rollouts/{model}/weights`` (``{"weights": {variant: w}}``),
``.../promote`` and ``.../rollback`` (optional ``{"variant": canary}``) change the
shared state, applied by every replica within a second; each answers the
rollout as it stands after. The rules and errors are in
:mod:`gateway.rollouts.operations`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import InvalidRequestError, NotFoundError
from gateway.http.admin_key import ADMIN_API_OFF, audit, require_admin_key
from gateway.http.context import app_state, read_body
from gateway.rollouts import operations
from gateway.rollouts.controller import RolloutController

router = APIRouter()


def _authorized(request: Request) -> RolloutController:
    require_admin_key(request, ADMIN_API_OFF)
    state = app_state(request)
    if state.rollout_control is None:
        raise NotFoundError("No rollouts are configured.", code="rollout_not_found")
    return state.rollout_control


async def _body(request: Request) -> Any:
    """The JSON body, or None when there is none."""
    state = app_state(request)
    raw = await read_body(
        request.receive, state.settings.server.max_body_bytes, request.headers.get("content-length")
    )
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("request body is not valid JSON") from None


def _json(data: object) -> Response:
    return Response(orjson.dumps(data), 200, media_type="application/json")


def _changed(request: Request, action: str, rollout: dict[str, Any]) -> Response:
    """The rollout as it stands after an operator's change, which is logged."""
    weights = {v["model"]: v["weight"] for v in rollout.get("variants", ())}
    audit(request, "rollout %r: %s, weights now %s", rollout.get("model"), action, weights)
    return _json(rollout)


async def list_all(request: Request) -> Response:
    control = _authorized(request)
    return _json({"object": "list", "data": operations.status(control)})


async def set_weights(request: Request) -> Response:
    control = _authorized(request)
    body = await _body(request)
    return _changed(
        request,
        "weights set",
        await operations.set_weights(control, request.path_params["model"], body),
    )


async def promote(request: Request) -> Response:
    control = _authorized(request)
    body = await _body(request)
    return _changed(
        request,
        "canary promoted",
        await operations.promote(control, request.path_params["model"], body),
    )


async def rollback(request: Request) -> Response:
    control = _authorized(request)
    body = await _body(request)
    return _changed(
        request,
        "rolled back",
        await operations.rollback(control, request.path_params["model"], body),
    )


router.add_route("/admin/rollouts", list_all, methods=["GET"])
router.add_route("/admin/rollouts/{model:path}/weights", set_weights, methods=["POST"])
router.add_route("/admin/rollouts/{model:path}/promote", promote, methods=["POST"])
router.add_route("/admin/rollouts/{model:path}/rollback", rollback, methods=["POST"])
