"""The gateway's exception tree and its OpenAI wire form.

Every failure the gateway reports to a client is a :class:`GatewayError`. Each
subclass fixes the HTTP status, the OpenAI ``type`` and, where OpenAI defines
one, the ``code``, so that the official SDK raises the matching exception class
(``BadRequestError`` for 400, ``NotFoundError`` for 404, ...). Translation from
transport exceptions (aiohttp, redis) happens at the boundary that raises them;
this package imports nothing else of ours (:mod:`gateway.errors.engine_body`: what an
engine's error answer says; :mod:`gateway.errors.engine_text`: what
of an engine's error text reaches the client; :mod:`gateway.errors.engine_internals`:
what of it never does; :mod:`gateway.errors.retry_hints`: the
``Retry-After`` and ``retry-after-ms`` of the gateway's own refusals).
"""

from __future__ import annotations

import orjson

from gateway.errors.engine_body import engine_error
from gateway.errors.engine_internals import (
    engine_failure_message,
    engine_field,
    without_internals,
    without_secrets,
)
from gateway.errors.engine_text import hide_names, relayed_retry_after
from gateway.errors.retry_hints import retry_after as retry_after


class StoreUnavailable(Exception):
    """Shared state (Redis) could not be reached; callers apply their failure policy."""


NO_RETRY = {"x-should-retry": "false"}
"""On a refusal that retrying cannot help: the OpenAI SDKs then do not retry (they
retry every 429 and 5xx otherwise, twice by default)."""


class GatewayError(Exception):
    """An error with a fixed HTTP status and an OpenAI-shaped body."""

    status: int = 500
    error_type: str = "internal_error"
    code: str | None = None
    before_output: bool = False
    """An engine failed before it wrote any of the answer (a stream's first event never
    came): it may have read the prompt, it generated nothing the client got."""

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
    """Refused for want of a right (403): the admin API when it is off."""

    status = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFoundError(GatewayError):
    """An unknown route (404)."""

    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    """The requested model is not served by this gateway, or the key may not use it
    (404, in OpenAI's words for both: a key learns nothing of models it may not use)."""

    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


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

    def __init__(
        self, message: str, kind: str, headers: dict[str, str], *, local: bool = False
    ) -> None:
        super().__init__(message, headers=headers)
        self.error_type = kind
        self.local = local
        """Decided by this process's fallback limiter while Redis was unreachable
        (``ratelimit.on_redis_error: local``): it says nothing of the key's window once
        Redis answers again."""


class QuotaExceededError(GatewayError):
    """A key has used up a quota that time alone does not restore quickly (429, as
    OpenAI's ``insufficient_quota``): the client must free some or ask for more."""

    status = 429
    error_type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, headers=dict(NO_RETRY))


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


class ModelUnavailableError(GatewayError):
    """Every engine of the model has failed for good (503): its supervisor will not
    restart them (restart budget spent, or a start that cannot succeed). Permanent until
    an operator acts, so it carries no ``Retry-After`` and tells the SDKs not to retry
    (``x-should-retry: false``): ``engine_unavailable``'s one second invited retries
    that could never succeed."""

    status = 503
    error_type = "service_unavailable"
    code = "model_unavailable"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"Every engine of model `{model}` has failed and will not be restarted "
            "(restart budget spent, or a start that cannot succeed): retrying cannot "
            "help until an operator restarts them.",
            param="model",
            headers=dict(NO_RETRY),
        )


class OverloadedError(GatewayError):
    """Every engine of the model is saturated and the gateway's wait ran out (503)."""

    status = 503
    error_type = "service_unavailable"
    code = "overloaded"


class ShuttingDownError(GatewayError):
    """The gateway is shutting down and ``server.shutdown_timeout_s`` ran out before the
    answer was complete (503; a stream already started gets it as its last event)."""

    status = 503
    error_type = "service_unavailable"
    code = "shutting_down"


class UpstreamTimeoutError(GatewayError):
    """The engine did not answer in time (504)."""

    status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"


class SlowReaderError(GatewayError):
    """A client of a stream shared by single flight fell further behind the engine than
    ``cache.max_lag_bytes``: its stream ends with this error event (the others go on)."""

    status = 408
    error_type = "timeout_error"
    code = "client_too_slow"


class UpstreamStatusError(GatewayError):
    """The engine answered with an error status; its error is sent in OpenAI's shape
    (:func:`openai_error`), with the engine's message."""

    def __init__(
        self,
        status: int,
        raw_body: bytes,
        content_type: str,
        retry_after: bytes | str | None = None,
        retry_after_ms: bytes | str | None = None,
    ) -> None:
        super().__init__(f"engine answered HTTP {status}")
        self.status = status
        self.raw_body = raw_body
        self.content_type = content_type
        hinted = retry_after is not None or retry_after_ms is not None
        if hinted and (status == 429 or status == 503):
            self.headers.update(relayed_retry_after(retry_after, retry_after_ms))
        self.prompt_param: str | None = "messages"
        """Where the prompt is on the request's route (``prompt`` for completions)."""
        self.renamed: tuple[str, ...] | None = None
        """``(*engine_names, asked)``: names the engines know the model by (a served name
        other than the client's, a model or adapter directory), which the message must
        not show: each is written as ``asked``, the name the client used
        (:func:`hide_names`)."""
        self.secrets: tuple[str, ...] = ()
        """The keys the gateway sends engines, never shown in the message (the
        forwarder sets them: an engine may echo the request's ``Authorization``)."""
        self.engine_refused_key = status == 401
        """The engine refused the *gateway's* key (the client's never reaches it): a
        502, never a 401 that tells the client its own accepted key is wrong."""
        if self.engine_refused_key:
            self.status = UpstreamError.status

    def body(self) -> bytes:
        if self.engine_refused_key:
            return error_body(
                "The engine refused this gateway's credentials (see models[].api_key).",
                UpstreamError.error_type,
                None,
                UpstreamError.code,
            )
        return openai_error(
            self.status, self.raw_body, self.prompt_param, self.renamed, self.secrets
        )


STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
"""OpenAI's ``error.type`` per status (5xx: ``server_error``)."""

CONTEXT_LENGTH_MARKERS = (
    "maximum context length",  # "This model's maximum context length is N tokens. However,
    # your prompt contains ..." and "Input length (N) exceeds model's maximum context length"
    "maximum model length",  # "The decoder prompt (length N) is longer than the maximum
    # model length of M." (also "... plus the number of requested output tokens ...")
)
"""vLLM 0.32's messages for a prompt (plus output) that does not fit the context."""

_MAX_MESSAGE = 4000


def openai_error(
    status: int,
    raw: bytes,
    prompt_param: str | None = "messages",
    renamed: tuple[str, ...] | None = None,
    secrets: tuple[str, ...] = (),
) -> bytes:
    """An engine's error answer (vLLM's ``{"error": {"message", "type":
    "BadRequestError", "param", "code": 400}}``, or any text) as OpenAI's error object:
    ``type`` from the status, ``code`` a string where OpenAI has one
    (``context_length_exceeded`` with ``param`` the prompt's field). A 4xx keeps the
    engine's message, with the engine-side names of the model in ``renamed`` written
    as the client's and what is internal to the engine (a traceback, addresses, file
    paths, the engines' keys in ``secrets``) removed, from its ``param`` and ``code`` too
    (each cut to 256 characters); a 5xx's message is replaced whole, being the engine
    operator's (:mod:`gateway.errors.engine_internals`)."""
    message, param, code = engine_error(raw)
    param, code = engine_field(param, secrets), engine_field(code, secrets)  # as messages are
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    error_type = STATUS_TYPES.get(status, fallback)
    if status < 500 and any(marker in message for marker in CONTEXT_LENGTH_MARKERS):
        error_type, code, param = "invalid_request_error", "context_length_exceeded", prompt_param
    elif status == 404 and "model" in message.lower() and "does not exist" in message:
        code, param = "model_not_found", "model"
    if status >= 500:
        return error_body(engine_failure_message(status), error_type, param, code)
    if secrets:  # first: a name hidden in a key must not leave the rest of the key
        message = without_secrets(message, secrets, _MAX_MESSAGE)
    if renamed is not None:
        message = hide_names(message, renamed[:-1], renamed[-1], _MAX_MESSAGE)
    message = without_internals(message, _MAX_MESSAGE) or f"engine answered HTTP {status}"
    return error_body(message, error_type, param, code)
