"""``vgate keys create|list|revoke``: API keys in the shared Redis, for every replica.

``create`` prints the secret once; nothing can show it again. Keys declared in
the config file are listed too (marked ``config``) but are changed by editing it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.auth.key_admin import KeyRequestError, NewKey, create_key, list_keys
from gateway.backends.redis.keys import RedisKeyStore
from gateway.backends.redis.link import redis_py_client
from gateway.config.rollouts import pin_problem
from gateway.config.settings import CONFIG_ENV_VAR, ConfigError, Settings, load_settings
from gateway.errors import StoreUnavailable
from gateway.pool.display import display_url


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="API keys kept in Redis")
    key_commands = keys.add_subparsers(title="key commands")

    create = key_commands.add_parser("create", help="make a key and print its secret once")
    _add_common(create)
    create.add_argument("--name", required=True, help="unique name, shown in logs and metrics")
    create.add_argument("--models", help="comma-separated models it may use (default: all)")
    create.add_argument("--rpm", type=_whole_number, help="requests per minute")
    create.add_argument("--tpm", type=_whole_number, help="tokens per minute")
    create.add_argument("--max-concurrent", type=_whole_number, help="requests in flight at once")
    create.add_argument("--expires", help="duration (90s, 12h, 30d, 2w) or ISO date/time (UTC)")
    create.add_argument(
        "--priority", help="tier: high, normal (default), low or an integer (lower: earlier)"
    )
    create.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="ROLLOUT=VARIANT",
        help="A/B by key: send this key's requests for ROLLOUT to VARIANT (repeatable)",
    )
    create.set_defaults(handler=_create)

    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    _add_common(listing)
    listing.set_defaults(handler=_list)

    revoke = key_commands.add_parser("revoke", help="revoke a key on every gateway (within 1 s)")
    _add_common(revoke)
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(handler=_revoke)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=f"YAML config file (or ${CONFIG_ENV_VAR})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _create(args: argparse.Namespace) -> int:
    settings = _settings(args)
    request: dict[str, Any] = {
        "name": args.name,
        "models": _model_names(args.models),
        "rpm": args.rpm,
        "tpm": args.tpm,
        "max_concurrent": args.max_concurrent,
        "expires": args.expires,
        "priority": args.priority,
        "variants": _variants(args.variant) or None,
    }

    new = NewKey.parse(request)  # refused here, before Redis is asked anything
    problem = pin_problem(settings.rollouts, new.variants or {})
    if problem is not None:
        raise KeyRequestError(problem)

    async def run(store: RedisKeyStore) -> dict[str, Any]:
        taken = {k.name for k in settings.auth.keys}
        secret, record = await create_key(store, new, taken)
        return record.public() | {"key": secret}

    created = _with_store(settings, run)
    if args.json:
        print(orjson.dumps(created).decode())
    else:
        print(f"created key '{created['name']}'")
        print(f"secret (shown once, store it now): {created['key']}")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    stored: list[dict[str, Any]] = _with_store(settings, list_keys)
    declared = [
        {"name": k.name, "models": list(k.models) or None, "rpm": k.rpm, "tpm": k.tpm,
         "max_concurrent": k.max_concurrent, "priority": k.priority,
         "variants": dict(k.variants), "source": "config"}
        for k in settings.auth.keys
    ]  # fmt: skip
    rows = declared + [row | {"source": "redis"} for row in stored]
    if args.json:
        print(orjson.dumps(rows).decode())
        return 0
    print(
        f"{'NAME':24} {'SOURCE':7} {'RPM':>7} {'TPM':>9} {'CONC':>5} {'PRIO':>5} "
        f"{'EXPIRES':26} MODELS"
    )
    for row in rows:
        print(
            f"{row['name']:24} {row['source']:7} {_cell(row['rpm']):>7} {_cell(row['tpm']):>9} "
            f"{_cell(row['max_concurrent']):>5} {_cell(row.get('priority')):>5} "
            f"{_cell(row.get('expires_at')):26} "
            f"{','.join(row['models'] or ['*'])}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # Revoked from the store first: a stored key that a config key's name shadows (the
    # gateways refuse it) must still be removable.
    if not _with_store(settings, lambda store: store.revoke(args.name)):
        if args.name in {k.name for k in settings.auth.keys}:
            raise KeyRequestError(f"'{args.name}' is declared in the config file: remove it there")
        print(f"vgate: no key named '{args.name}'", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps({"name": args.name, "revoked": True}).decode())
    else:
        print(f"revoked key '{args.name}'")
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if settings.redis.url is None:
        raise ConfigError(
            "`vgate keys` keeps keys in Redis: set redis.url (or VGATE_REDIS__URL); "
            "without Redis, declare keys under auth.keys in the config file"
        )
    return settings


def _with_store(settings: Settings, action: Any) -> Any:
    async def run() -> Any:
        assert settings.redis.url is not None
        client = redis_py_client(settings.redis.url, settings.redis.timeout_s)
        try:
            return await action(RedisKeyStore(client, timeout_s=settings.redis.timeout_s))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except StoreUnavailable as exc:
        where = display_url(settings.redis.url or "")  # never the password in the URL
        raise ConfigError(f"cannot reach Redis at {where}: {exc}") from None


def _whole_number(text: str) -> int:
    """A limit as ASCII digits: ``int`` alone also takes ``٣``, ``1_000`` and `` 7 ``."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number (digits 0-9)")
    return int(text)


def _model_names(text: str | None) -> list[str] | None:
    """``--models a,b`` as names, each without the spaces around it (``a, b`` is a and
    b); an empty one (``a,,b``, a trailing comma, ``--models ""``) is an error, never
    read as "all models" (that is leaving ``--models`` out)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise KeyRequestError(
            f"--models {text[:80]!r}: a model name is empty; write them as a,b "
            "(leave --models out for all models)"
        )
    return names


def _variants(pairs: list[str]) -> dict[str, str]:
    """``--variant rollout=variant`` flags as a mapping; a malformed one is an error."""
    variants: dict[str, str] = {}
    for pair in pairs:
        rollout, sep, variant = pair.partition("=")
        if not sep or not rollout.strip() or not variant.strip():
            raise KeyRequestError(f"--variant {pair!r}: write it as ROLLOUT=VARIANT")
        variants[rollout.strip()] = variant.strip()
    return variants


def _cell(value: object) -> str:
    return "-" if value is None else str(value)
