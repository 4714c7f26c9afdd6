"""``GET /v1/models``: the models this gateway serves, in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.http.context import app_state

router = APIRouter()


async def list_models(request: Request) -> Response:
    """Only the models the caller's key may use."""
    state = app_state(request)
    principal = await state.service.authenticate(request.headers.get("authorization"))
    return Response(state.catalog.list_body(principal.models), media_type="application/json")


router.add_route("/v1/models", list_models, methods=["GET"])
