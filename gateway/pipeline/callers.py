"""Who is calling and what they may use: the two checks every client route makes
(completions, embeddings, the Responses API, vLLM's model-scoped routes), each
counted in ``vgate_auth_failures_total`` the same way wherever it refuses."""

from __future__ import annotations

from gateway.auth.authenticator import Authenticator, Principal
from gateway.errors import AuthenticationError, ModelNotFoundError
from gateway.observability.metrics import GatewayMetrics


async def authenticate(
    authenticator: Authenticator, metrics: GatewayMetrics, authorization: str | None
) -> Principal:
    """The caller: the key known in memory, else the full check; 401
    (:class:`AuthenticationError`, counted as ``missing_key`` or ``invalid_key``)."""
    principal = authenticator.known(authorization)
    if principal is not None:
        return principal
    try:
        return await authenticator.authenticate(authorization)
    except AuthenticationError:
        reason = "missing_key" if not authorization else "invalid_key"
        metrics.auth_failures.labels(reason).inc()
        raise


def check_model_allowed(principal: Principal, model: str, metrics: GatewayMetrics) -> None:
    """404 ``model_not_found`` when the key may not use ``model``: the same answer as
    for a model that does not exist, as OpenAI gives (a tenant cannot list another's
    models by trying names), counted as ``model_not_allowed`` for the operator."""
    if not principal.may_use(model):
        metrics.auth_failures.labels("model_not_allowed").inc()
        raise ModelNotFoundError(model)
