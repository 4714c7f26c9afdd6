"""The rate limiter in Redis: one Lua script per decision (``limiter.lua``).

One round trip admits or refuses a request for every scope at once, atomically,
so any number of gateway replicas enforce one limit together. The script reads
the time from Redis, so replicas on hosts whose clocks disagree still agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from redis.exceptions import RedisError

from gateway.backends.redis_link import RedisLink
from gateway.errors import StoreUnavailable
from gateway.ratelimit import (
    NEVER,
    REFUSAL_KINDS,
    WINDOW_S,
    Decision,
    LimitScope,
    ScopeState,
)

_SCRIPT = resources.files("gateway.backends").joinpath("limiter.lua").read_text("utf-8")


class RedisLimiter:
    """:class:`gateway.ratelimit.LimiterBackend` on a shared Redis."""

    def __init__(
        self, link: RedisLink, prefix: str = "vgate:rl:", window_s: float = WINDOW_S
    ) -> None:
        self._link = link
        self._window_ms = int(window_s * 1000)
        self._prefix = prefix
        self._script = link.client.register_script(_SCRIPT)

    async def admit(
        self, scopes: Sequence[LimitScope], request_id: str, tokens: int, lease_s: float
    ) -> Decision:
        args: list[str | int] = [
            "admit",
            request_id,
            tokens,
            self._window_ms,
            int(lease_s * 1000),
        ]
        for scope in scopes:
            args.extend(scope.limits.as_args())
        reply = await self._call(scopes, args)
        states = tuple(
            ScopeState(
                requests=int(reply[i]),
                tokens=int(reply[i + 1]),
                requests_reset_s=int(reply[i + 2]) / 1000,
                tokens_reset_s=int(reply[i + 2]) / 1000,
            )
            for i in range(3, len(reply), 3)
        )
        refused = int(reply[1])
        retry_ms = int(reply[2])
        return Decision(
            admitted=bool(reply[0]),
            refused=REFUSAL_KINDS[refused - 1] if refused else None,
            retry_after_s=NEVER if retry_ms < 0 else retry_ms / 1000,
            states=states,
        )

    async def settle(
        self, scopes: Sequence[LimitScope], request_id: str, reserved: int, actual: int | None
    ) -> None:
        await self._call(scopes, ["settle", request_id, reserved, -1 if actual is None else actual])

    async def close(self) -> None:
        """The link is shared and closed by its owner."""

    async def _call(self, scopes: Sequence[LimitScope], args: list[str | int]) -> list[int]:
        keys: list[str] = []
        for scope in scopes:
            base = f"{self._prefix}{scope.key}"
            keys += [f"{base}:log", f"{base}:tokens", f"{base}:slots"]
        self._link.check()
        try:
            reply: list[int] = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._link.failed(exc)
            raise StoreUnavailable(str(exc)) from None
        self._link.succeeded()
        return reply
