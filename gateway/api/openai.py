"""OpenAI completion routes: read the body within the size limit, hand it to the service."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.context import app_state, read_body, request_id
from gateway.service import CHAT, COMPLETIONS

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = app_state(request)
    raw = await read_body(request, state.settings.server.max_body_bytes)
    return await state.service.handle(CHAT, raw, request_id(request))


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = app_state(request)
    raw = await read_body(request, state.settings.server.max_body_bytes)
    return await state.service.handle(COMPLETIONS, raw, request_id(request))
