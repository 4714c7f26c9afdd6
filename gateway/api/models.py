"""``GET /v1/models``: the models this gateway serves, in OpenAI's list shape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.context import app_state

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    return Response(app_state(request).catalog.list_body(), media_type="application/json")
