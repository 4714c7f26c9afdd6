"""Start-up warnings for a configuration that leaves the gateway open to whoever reaches it.

The defaults are safe (the gateway listens on loopback, auth off is then only this
machine's business), but ``server.host: 0.0.0.0`` with ``auth.enabled: false`` serves
every model, unlimited, to anyone who can reach the port, and a Redis without
credentials away from this machine hands whoever reaches it the API keys' digests,
their limits and the engine registry (where the gateway sends requests); an operator
listener (``server.admin_port``) beyond loopback without ``server.operator_token``
shows anyone who reaches it the engines' addresses, the key names and what each
consumes. All are legitimate behind a network that keeps tenants out, so they are
not refused: each is logged as a warning when the gateway starts, naming the setting
that changes it.
What a warning says names hosts and ports, never a password.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from gateway.config.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to, possibly beyond this machine


def exposure_warnings(settings: Settings) -> list[str]:
    """What in ``settings`` opens the gateway or its state beyond this machine, unguarded."""
    warnings: list[str] = []
    server = settings.server
    if not settings.auth.enabled and not is_loopback(server.host):
        warnings.append(
            f"auth is off (auth.enabled: false) and the gateway listens on {server.host}:"
            f"{server.port}: anyone who reaches that port may use every model without a key "
            "or a limit; set auth.enabled: true, or server.host: 127.0.0.1"
        )
    operator_open = server.admin_port is not None and server.operator_token is None
    if operator_open and not is_loopback(server.admin_host):
        warnings.append(
            f"the operator listener on {server.admin_host}:{server.admin_port} asks no "
            "token: whoever reaches it reads /metrics, /sd/engines (engine addresses), "
            "the detailed /ready and /status (key names and what they consume); set "
            "server.operator_token (VGATE_SERVER__OPERATOR_TOKEN), or "
            "server.admin_host: 127.0.0.1"
        )
    urls = {"redis.url": settings.redis.url, "cache.redis_url": settings.cache.redis_url}
    for setting, url in urls.items():
        where = _unguarded_redis(url)
        if where is not None:
            warnings.append(
                f"{setting} names no password for the Redis at {where}: whoever reaches it "
                "can read and change API keys, limits and the engine registry; give it a "
                "password or an ACL user (redis://user:password@host:port)"
            )
    return warnings


def _unguarded_redis(url: str | None) -> str | None:
    """``host:port`` of a Redis URL away from this machine that carries no password."""
    if url is None:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        return None  # not ours to judge here: connecting reports it
    host = parts.hostname
    if parts.scheme == "unix" or host is None or is_loopback(host):
        return None
    if parts.password or "password=" in parts.query:  # redis-py reads either
        return None
    return f"{host}:{port}"
