"""``vgate rollout status|set|promote|rollback``: steer rollouts through a running gateway.

Unlike ``vgate keys`` (which writes keys to Redis itself), these commands call the
gateway's ``/admin/rollouts`` API: the window statistics and the canaries' health
exist only inside gateways, a single-process gateway keeps its rollout state in
memory, and every change then goes through the one set of checks the API applies
(and reaches every replica through the shared state within a second). Where to
call and with which key come from the same config file as the gateway's:
``server.admin_port`` (the operator listener) or else the public port, and
``auth.admin_key`` (or ``$VGATE_AUTH__ADMIN_KEY``); ``--url`` overrides the address.
"""

from __future__ import annotations

import argparse
import http.client
import math
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.config.settings import CONFIG_ENV_VAR, ConfigError, Settings, load_settings

TIMEOUT_S = 10.0
_ANY_ADDRESS = {"0.0.0.0", "::", ""}
Handler = Callable[[argparse.Namespace], int]


class GatewayRefused(Exception):
    """The gateway answered an error, or could not be reached (exit status 1)."""


def _reporting(handler: Handler) -> Handler:
    """``handler``, printing a refusal as ``vgate: ...`` with exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except GatewayRefused as exc:
            print(f"vgate: {exc}", file=sys.stderr)
            return 1

    return run


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = commands.add_parser("rollout", help="rollouts: weights, promotion, rollback")
    rollout_commands = rollout.add_subparsers(title="rollout commands")

    status = rollout_commands.add_parser("status", help="every rollout, its weights and health")
    _add_common(status)
    status.set_defaults(handler=_reporting(_status))

    weights = rollout_commands.add_parser("set", help="set variants' weights (on every replica)")
    _add_common(weights)
    weights.add_argument("model", help="the rollout (the model name clients use)")
    weights.add_argument("weights", nargs="+", metavar="VARIANT=WEIGHT")
    weights.set_defaults(handler=_reporting(_set))

    for name, text in (
        ("promote", "move a canary to its next step"),
        ("rollback", "set a canary's weight to 0 (default: every canary)"),
    ):
        command = rollout_commands.add_parser(name, help=text)
        _add_common(command)
        command.add_argument("model", help="the rollout (the model name clients use)")
        command.add_argument("--variant", help="the canary (needed when there are several)")
        command.set_defaults(handler=_reporting(_action), action=name)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=f"YAML config file (or ${CONFIG_ENV_VAR})")
    parser.add_argument("--url", help="the gateway's admin address (default: from the config)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _status(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", "/admin/rollouts")
    if args.json:
        print(orjson.dumps(answer["data"]).decode())
        return 0
    for rollout in answer["data"]:
        _print_rollout(rollout)
    return 0


def _set(args: argparse.Namespace) -> int:
    weights: dict[str, float] = {}
    for item in args.weights:
        variant, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not variant or not math.isfinite(weight) or weight < 0:
            # (nan and inf went out as JSON null, refused by the gateway as "invalid")
            expected = "expected VARIANT=WEIGHT, a weight of 0 or more, e.g. my-model-v2=10"
            raise ConfigError(f"{item[:80]!r}: {expected}")
        weights[variant] = weight
    path = f"/admin/rollouts/{_quoted(args.model)}/weights"
    return _show(args, _call(args, "POST", path, {"weights": weights}))


def _action(args: argparse.Namespace) -> int:
    body = {"variant": args.variant} if args.variant else {}
    path = f"/admin/rollouts/{_quoted(args.model)}/{args.action}"
    return _show(args, _call(args, "POST", path, body))


def _show(args: argparse.Namespace, rollout: dict[str, Any]) -> int:
    if args.json:
        print(orjson.dumps(rollout).decode())
    else:
        _print_rollout(rollout)
    return 0


def _print_rollout(rollout: dict[str, Any]) -> None:
    print(f"rollout {rollout['model']} (version {rollout['version']}, last change: "
          f"{rollout['last_action']} by {rollout['changed_by']})")  # fmt: skip
    print(f"  {'VARIANT':28} {'WEIGHT':>9} {'SHARE%':>7} {'ROLE':7} {'STATE':12} "
          f"{'REQS':>6} {'ERR%':>6} {'TTFT95':>8} {'ITL95':>8}")  # fmt: skip
    for row in rollout["variants"]:
        window = row["window"]
        role = "canary" if row["canary"] else "stable"
        print(
            f"  {row['model']:28} {row['weight']:>9g} {row['share_percent']:>7.2f} {role:7} "
            f"{row.get('state', '-'):12} {window['requests']:>6} "
            f"{100 * window['error_rate']:>6.2f} {_ms(window['ttft_p95_s']):>8} "
            f"{_ms(window['itl_p95_s']):>8}"
        )
    last = rollout.get("last_rollback")
    if last is not None:
        print(f"  last rollback: {last['variant']} ({last['reason']}, by {last['by']}): "
              f"{last['detail']}")  # fmt: skip


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def _quoted(model: str) -> str:
    return urllib.parse.quote(model, safe="/")


def _call(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    settings = load_settings(args.config)
    base = (args.url or admin_url(settings)).rstrip("/")
    headers = {"content-type": "application/json"}
    if settings.auth.admin_key is not None:
        headers["authorization"] = f"Bearer {settings.auth.admin_key}"
    data = None if body is None else orjson.dumps(body)
    try:
        request = urllib.request.Request(base + path, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise GatewayRefused(f"{exc.code}: {_error_message(exc.read())}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise GatewayRefused(f"cannot reach the gateway at {base}: {exc}") from None
    except http.client.HTTPException as exc:  # something that does not speak HTTP
        raise GatewayRefused(f"{base} did not answer as an HTTP server: {exc!r}") from None
    except ValueError as exc:  # a malformed --url (urllib checks it when opening)
        raise GatewayRefused(f"cannot call {base}: {exc}") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise GatewayRefused(f"{base} answered something that is not JSON: is it vgate?") from None


def _error_message(raw: bytes) -> str:
    try:
        error = orjson.loads(raw)["error"]
        return f"{error['message']} ({error.get('code') or error.get('type')})"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return raw[:200].decode(errors="replace")


def admin_url(settings: Settings) -> str:
    """Where ``/admin/*`` is served: the operator listener, else the public port."""
    server = settings.server
    host, port = server.host, server.port
    if server.admin_port is not None:
        host, port = server.admin_host, server.admin_port
    if host in _ANY_ADDRESS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
