"""Which operational route is served where: the public port or the operator listener.

Operator routes — ``/metrics``, ``/sd/engines``, the detailed ``/ready``, the
live status page ``/status`` (and its feed ``/status/events``) and ``/admin/*`` —
say which engines exist, where they run, which keys exist and what they consume.
Clients have no business with any of it, so:

- with ``server.admin_port`` set, they are served by the operator listener
  (:func:`operator_router`, bound to ``server.admin_host``, default loopback)
  and the public port answers 404 for them;
- without it, they stay on the public port behind ``auth.admin_key``
  (``Authorization: Bearer <admin key>``; 401 without it or with another, 403
  when no admin key is configured, in OpenAI's error format).

Either way ``/health`` is public, the public ``/ready`` answers ready or not and
nothing more (the detail needs the admin key), and ``server.public_metrics:
true`` opens ``/metrics`` on the public port to anyone, on purpose. The operator
listener itself asks no key for ``/metrics``, ``/sd/engines``, ``/ready`` and
``/status`` unless ``server.operator_token`` is set: then those routes want
``Authorization: Bearer <operator token>`` (or the admin key; 401 otherwise, counted
as ``vgate_auth_failures_total{reason="invalid_operator_token"}``), so that a
listener bound beyond loopback is not guarded by network policy alone; Prometheus
sends the token (``authorization: {credentials_file: ...}``). ``/health`` stays open,
and ``/admin/*`` checks the admin key there too, never the operator token (which
reads, never changes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from gateway.config.sections import ServerSettings
from gateway.http import admin, admin_key, ops, status

GET = ["GET"]
Handler = Callable[[Request], Awaitable[Response]]


OFF_ON_THE_PUBLIC_PORT = (
    "Operator routes are off on the public port: set server.admin_port (an operator "
    "listener) or auth.admin_key."
)


def behind_admin_key(handler: Handler) -> Handler:
    """``handler``, answered only to requests that carry the admin key."""

    async def guarded(request: Request) -> Response:
        admin_key.require_admin_key(request, OFF_ON_THE_PUBLIC_PORT)
        return await handler(request)

    return guarded


async def ready_for_admin(request: Request) -> Response:
    """The public ``/ready`` without an operator listener: the detail for the admin
    key, ready-or-not for everyone else."""
    if admin_key.admin_key_presented(request):
        return await ops.ready_detail(request)
    return await ops.ready_status(request)


def public_router(server: ServerSettings) -> APIRouter:
    """The operational routes of the public port (see the module docstring)."""
    router = APIRouter()
    router.add_route("/health", ops.health, methods=GET)
    if server.admin_port is not None:
        router.add_route("/ready", ops.ready_status, methods=GET)
        if server.public_metrics:
            router.add_route("/metrics", ops.metrics, methods=GET)
        return router
    router.add_route("/ready", ready_for_admin, methods=GET)
    metrics = ops.metrics if server.public_metrics else behind_admin_key(ops.metrics)
    router.add_route("/metrics", metrics, methods=GET)
    router.add_route("/sd/engines", behind_admin_key(ops.engine_targets), methods=GET)
    router.add_route("/status", behind_admin_key(status.page), methods=GET)
    router.add_route("/status/events", behind_admin_key(status.events), methods=GET)
    router.include_router(admin.router)  # checks the admin key itself
    return router


def behind_operator_token(handler: Handler) -> Handler:
    """``handler``, answered only to requests that carry ``server.operator_token`` or the
    admin key when a token is set (to anyone who reaches the listener otherwise)."""

    async def guarded(request: Request) -> Response:
        admin_key.require_operator_token(request)
        return await handler(request)

    return guarded


def operator_router() -> APIRouter:
    """Every route of the operator listener."""
    router = APIRouter()
    router.add_route("/health", ops.health, methods=GET)
    router.add_route("/ready", behind_operator_token(ops.ready_detail), methods=GET)
    router.add_route("/metrics", behind_operator_token(ops.metrics), methods=GET)
    router.add_route("/sd/engines", behind_operator_token(ops.engine_targets), methods=GET)
    router.add_route("/status", behind_operator_token(status.page), methods=GET)
    router.add_route("/status/events", behind_operator_token(status.events), methods=GET)
    router.include_router(admin.router)
    return router
