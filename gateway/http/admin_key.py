"""The admin key's check, one for every route behind it, the operator token's, and the
operator's audit trail.

``/admin/keys``, ``/admin/rollouts`` and, without an operator listener, the operator
routes of the public port (:mod:`gateway.http.operator`) all want
``Authorization: Bearer <auth.admin_key>``. They used to check it three times, each
its own way; here it is checked once, the same way: 403 ``admin_disabled`` when no
admin key is configured, 401 ``invalid_api_key`` otherwise, counted as
``vgate_auth_failures_total{reason="invalid_admin_key"}``, so that someone guessing
the admin key shows on the operator's dashboards (a client key's failures are
counted the same way, as ``missing_key``/``invalid_key``). Nothing a caller sent is
logged for a refusal: a flood of wrong keys must not flood the log.

The operator listener's read-only routes (``/metrics``, ``/sd/engines``, the detailed
``/ready``, ``/status``) take ``server.operator_token`` or the admin key, when a token
is set (:func:`require_operator_token`; 401 otherwise, counted as
``invalid_operator_token``): Prometheus gets a token that can read, not change.

What the admin key changes (a key made or revoked, a rollout's weights set, a canary
promoted or rolled back) is logged at ``info`` on ``vgate.admin``
(:func:`audit`): which change, and from which address. The secret never is.
"""

from __future__ import annotations

import logging

from starlette.requests import Request

from gateway.auth.bearer import carries_key
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.http.context import app_state

log = logging.getLogger("vgate.admin")
FAILURE_REASON = "invalid_admin_key"
OPERATOR_FAILURE_REASON = "invalid_operator_token"
ADMIN_API_OFF = "The admin API is off: set auth.admin_key to use it."
"""Why ``/admin/keys`` and ``/admin/rollouts`` answer 403 ``admin_disabled``."""


def admin_key_presented(request: Request) -> bool:
    """Whether the request carries ``Authorization: Bearer <auth.admin_key>`` (no count:
    the public ``/ready`` asks this of everyone)."""
    admin_key = app_state(request).settings.auth.admin_key
    if admin_key is None:
        return False
    return carries_key(request.headers.get("authorization"), admin_key)


def require_admin_key(request: Request, disabled: str) -> None:
    """Raise unless the request carries the admin key: 403 ``admin_disabled`` (with
    ``disabled`` as its message) when none is configured, 401 otherwise (counted)."""
    state = app_state(request)
    if state.settings.auth.admin_key is None:
        raise PermissionDeniedError(disabled, code="admin_disabled")
    if not admin_key_presented(request):
        state.metrics.auth_failures.labels(FAILURE_REASON).inc()
        raise AuthenticationError("This route needs the admin key.", code="invalid_api_key")


def require_operator_token(request: Request) -> None:
    """Raise 401 ``invalid_api_key`` (counted) unless ``server.operator_token`` is unset or
    the request carries it or the admin key (the operator listener's read-only routes)."""
    state = app_state(request)
    token = state.settings.server.operator_token
    if token is None:
        return
    authorization = request.headers.get("authorization")
    if carries_key(authorization, token.get_secret_value()) or admin_key_presented(request):
        return
    state.metrics.auth_failures.labels(OPERATOR_FAILURE_REASON).inc()
    raise AuthenticationError(
        "This route needs the operator token (server.operator_token) or the admin key: "
        "send it as 'Authorization: Bearer <token>'.",
        code="invalid_api_key",
    )


def audit(request: Request, change: str, *args: object) -> None:
    """Log a change the admin key made: ``change`` (%-style, with ``args``) and who asked."""
    client = request.client
    where = f"{client.host}:{client.port}" if client is not None else "unknown"
    log.info("admin: " + change + " (from %s)", *args, where)
