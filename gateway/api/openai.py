"""OpenAI completion routes: read the body within the size limit, hand it to the service.

Routes are plain Starlette routes (``add_route``), not FastAPI ``APIRoute``s: they
take the raw request and return a ready response, so FastAPI's per-request
dependency solving and query parsing would be pure overhead on the hot path.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.context import app_state, read_body, request_id
from gateway.service import CHAT, COMPLETIONS

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    state = app_state(request)
    raw = await read_body(request, state.settings.server.max_body_bytes)
    return await state.service.handle(CHAT, raw, request_id(request))


async def completions(request: Request) -> Response:
    state = app_state(request)
    raw = await read_body(request, state.settings.server.max_body_bytes)
    return await state.service.handle(COMPLETIONS, raw, request_id(request))


router.add_route(CHAT.path, chat_completions, methods=["POST"])
router.add_route(COMPLETIONS.path, completions, methods=["POST"])
