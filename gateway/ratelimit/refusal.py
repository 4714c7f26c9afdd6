"""The 429 a refused admission answers: OpenAI's message for the limit that refused
it, what the request needed, and the headers that say when (or whether) to retry."""

from __future__ import annotations

from gateway.errors import NO_RETRY, RateLimitError
from gateway.observability.metrics import GatewayMetrics
from gateway.ratelimit.cost import Cost
from gateway.ratelimit.limits import (
    NEVER,
    Decision,
    LimitScope,
    format_duration,
    retry_after_header,
)


def refusal(
    scopes: tuple[LimitScope, ...],
    decision: Decision,
    cost: Cost,
    headers: dict[str, str],
    metrics: GatewayMetrics,
    local: bool = False,
) -> RateLimitError:
    """The 429 for a request ``decision`` refused (counted in
    ``vgate_rate_limited_total``): which limit, what it needed (the prompt as it was
    charged, calibration included), and when to retry, if ever. ``local``: decided
    in this process's memory (Redis unreachable)."""
    kind = decision.refused or "requests"
    owner = scopes[0].owner
    metrics.rate_limited.labels(owner, kind).inc()
    limits = [s.limits for s in scopes]
    need = cost.prompt + (cost.choices if cost.wanted else 0)
    if kind == "tokens" and decision.retry_after_s == NEVER:
        limit = min(lim.tpm for lim in limits if lim.tpm is not None)
        message = (
            f"Request too large for key '{owner}': its prompt (about {cost.prompt} tokens) "
            f"and at least one token for each of its {cost.choices} choices need {need} "
            f"tokens, and the limit is {limit} tokens per min. "
            "Shorten the prompt or ask for fewer choices."
        )
        return RateLimitError(message, kind, headers | NO_RETRY, local=local)
    wait = format_duration(decision.retry_after_s)
    if kind == "concurrency":
        limit = min(lim.max_concurrent for lim in limits if lim.max_concurrent is not None)
        what = f"concurrent requests: limit {limit}"
    elif kind == "tokens":
        limit = min(lim.tpm for lim in limits if lim.tpm is not None)
        what = f"tokens per min: limit {limit}, needed at least {need}"
    else:
        limit = min(lim.rpm for lim in limits if lim.rpm is not None)
        what = f"requests per min: limit {limit}"
    message = f"Rate limit reached for key '{owner}' on {what}. Please try again in {wait}."
    wait_header = retry_after_header(decision.retry_after_s)
    return RateLimitError(message, kind, headers | wait_header, local=local)
