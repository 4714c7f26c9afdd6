"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models this gateway serves, in
OpenAI's shape, with what their engines report (``max_model_len``, ``root``,
``parent``).

A model the caller's key may not use is answered exactly like one that does not
exist (404 ``model_not_found``): a key learns nothing of models outside its list.
Ids may hold ``/`` (hub ids such as ``org/model``): the route takes the rest of
the path.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import ModelNotFoundError
from gateway.http.context import app_state

router = APIRouter()
_JSON = "application/json"


async def list_models(request: Request) -> Response:
    """Only the models the caller's key may use."""
    state = app_state(request)
    principal = await state.service.authenticate(request.headers.get("authorization"))
    return Response(state.catalog.list_body(principal.models), media_type=_JSON)


async def retrieve_model(request: Request) -> Response:
    """One model, if the caller's key may use it."""
    state = app_state(request)
    principal = await state.service.authenticate(request.headers.get("authorization"))
    model: str = request.path_params["model"]
    body = state.catalog.detail_body(model, principal.models)
    if body is None:
        raise ModelNotFoundError(model)
    return Response(body, media_type=_JSON)


router.add_route("/v1/models", list_models, methods=["GET"])
router.add_route("/v1/models/{model:path}", retrieve_model, methods=["GET"])
