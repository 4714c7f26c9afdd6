"""The gateway's exception tree and its OpenAI wire form.

Every failure the gateway reports to a client is a :class:`GatewayError`. Each
subclass fixes the HTTP status, the OpenAI ``type`` and, where OpenAI defines
one, the ``code``, so that the official SDK raises the matching exception class
(``BadRequestError`` for 400, ``NotFoundError`` for 404, ...). Translation from
transport exceptions (aiohttp, redis) happens at the boundary that raises them;
this module imports nothing of ours.
"""

from __future__ import annotations

import orjson


class StoreUnavailable(Exception):
    """Shared state (Redis) could not be reached; callers apply their failure policy."""


class GatewayError(Exception):
    """An error with a fixed HTTP status and an OpenAI-shaped body."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        """The JSON body OpenAI clients parse: ``{"error": {...}}``."""
        return error_body(self.message, self.error_type, self.param, self.code)


def error_body(message: str, error_type: str, param: str | None, code: str | None) -> bytes:
    """Encode one OpenAI error object."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    )


class InvalidRequestError(GatewayError):
    """The body is not valid JSON or a field has the wrong type (400)."""

    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(GatewayError):
    """Missing or unknown API key (401)."""

    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    """The key may not use this model (403)."""

    status = 403
    error_type = "permission_error"
    code = "model_not_allowed"


class NotFoundError(GatewayError):
    """An unknown route (404)."""

    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """The requested model is not served by this gateway (404)."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.", param="model")


class MethodNotAllowedError(GatewayError):
    """A known route called with the wrong HTTP method (405)."""

    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLargeError(GatewayError):
    """The request body exceeds the configured limit (413)."""

    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(GatewayError):
    """A rate limit of the key is exhausted (429); ``type`` names the limit, as OpenAI's does."""

    status = 429
    error_type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.error_type = kind


class DependencyUnavailableError(GatewayError):
    """Shared state the request needs (Redis) is unreachable and policy says refuse (503)."""

    status = 503
    error_type = "service_unavailable"
    code = "dependency_unavailable"


class UpstreamError(GatewayError):
    """The engine failed in a way that is not the client's fault (502)."""

    status = 502
    error_type = "upstream_error"
    code = "bad_gateway"


class NoEngineAvailableError(GatewayError):
    """No engine for the model could be reached (503)."""

    status = 503
    error_type = "service_unavailable"
    code = "engine_unavailable"


class OverloadedError(GatewayError):
    """Every engine of the model is saturated and the gateway's wait ran out (503)."""

    status = 503
    error_type = "service_unavailable"
    code = "overloaded"


class UpstreamTimeoutError(GatewayError):
    """The engine did not answer in time (504)."""

    status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class UpstreamStatusError(GatewayError):
    """The engine answered with an error status; its body passes through unchanged."""

    def __init__(self, status: int, raw_body: bytes, content_type: str) -> None:
        super().__init__(f"engine answered HTTP {status}")
        self.status = status
        self.raw_body = raw_body
        self.content_type = content_type

    def body(self) -> bytes:
        if self.content_type.startswith("application/json") and self.raw_body:
            return self.raw_body
        text = self.raw_body.decode("utf-8", "replace")[:2000] or self.message
        error_type = "invalid_request_error" if self.status < 500 else "upstream_error"
        return error_body(text, error_type, None, None)
