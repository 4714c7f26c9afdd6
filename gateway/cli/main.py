"""The ``vgate`` command.

``vgate serve`` runs the gateway, ``vgate engines stub`` the fake engine,
``vgate up`` the whole stack on one machine, ``vgate keys`` manages API keys.
Sub-commands that belong to the engine side delegate to :mod:`engines`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn
from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE

from gateway.auth.key_admin import KeyRequestError
from gateway.cli import keys as cli_keys
from gateway.cli import rollout as cli_rollout
from gateway.cli import stack as cli_stack
from gateway.cli.exposure import exposure_warnings
from gateway.cli.workers import WorkerSupervisor
from gateway.collector import size_young_generation
from gateway.config.settings import (
    CONFIG_ENV_VAR,
    ENV_PREFIX,
    ConfigError,
    Settings,
    load_settings,
    with_overrides,
)
from gateway.http.connections import ConnectionLimits, limited_protocol
from gateway.http.draining import DrainingServer, engines_now, readiness_drain
from gateway.http.listener import taken
from gateway.native import install as install_native
from gateway.observability.logs import configure_logging, uvicorn_log_config

log = logging.getLogger("vgate")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:2] == ["engines", "stub"]:
        from engines.stub.server import stub_main

        return int(stub_main(args_list[2:]))
    if args_list[:2] == ["models", "quantize"]:
        from engines.models.quantize import quantize_main

        return quantize_main(args_list[2:])
    parser = _build_parser()
    args = parser.parse_args(args_list)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except (ConfigError, KeyRequestError) as exc:
        print(f"vgate: {exc}", file=sys.stderr)
        return 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vgate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the gateway")
    _add_server_flags(serve)
    serve.set_defaults(handler=_serve)

    engines = commands.add_parser("engines", help="engine-side commands")
    engine_commands = engines.add_subparsers(title="engine commands")
    engine_commands.add_parser(
        "stub", help="a deterministic OpenAI-compatible fake engine (see --help)", add_help=False
    )
    run = engine_commands.add_parser("run", help="the engine supervisor alone (needs Redis)")
    run.add_argument("--config", type=Path, help=f"YAML config file (or ${CONFIG_ENV_VAR})")
    run.set_defaults(handler=cli_stack.engines_run)
    cli_stack.add_commands(commands)
    cli_keys.add_commands(commands)
    cli_rollout.add_commands(commands)
    return parser


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help=f"YAML config file (or ${CONFIG_ENV_VAR})")
    parser.add_argument("--host", help="bind address (server.host)")
    parser.add_argument("--port", type=int, help="listen port (server.port)")
    parser.add_argument("--workers", type=int, help="gateway worker processes (server.workers)")
    parser.add_argument("--admin-port", type=int, help="operator listener port (server.admin_port)")


def _serve(args: argparse.Namespace) -> int:
    flags = {"host": args.host, "port": args.port, "workers": args.workers,
             "admin_port": args.admin_port}  # fmt: skip
    settings = with_overrides(load_settings(args.config), **flags)
    if args.config is not None:
        # Worker processes re-load the same file through the factory below.
        os.environ[CONFIG_ENV_VAR] = str(args.config.resolve())
    if settings.server.workers > 1:
        # ... and the flags through the environment: each binds the operator port itself.
        for name, value in flags.items():
            if value is not None:
                os.environ[f"{ENV_PREFIX}SERVER__{name.upper()}"] = str(value)
    run_gateway(settings)
    return 0


def run_gateway(settings: Settings, on_engines_ready: Callable[[], None] | None = None) -> None:
    """Serve the gateway in the foreground until SIGINT/SIGTERM.

    What it prints names the gateway's own listeners, never an engine: engine URLs
    may carry credentials (see :mod:`gateway.pool.display`)."""
    server = settings.server
    configure_logging(server.log_level, server.log_format)
    log.info(
        "vgate gateway on http://%s:%d/v1 (%d worker(s)); operator routes %s",
        server.host,
        server.port,
        server.workers,
        operator_location(settings),
    )
    for warning in exposure_warnings(settings):
        log.warning(warning)
    if server.admin_port and taken(server.admin_host, server.admin_port):
        log.error(
            "server.admin_port %d on %s is in use (another gateway?): not starting",
            server.admin_port,
            server.admin_host,
        )
        sys.exit(STARTUP_FAILURE)
    native = install_native()  # already installed by the package: says which it was
    if native is not None:
        log.info("request path compiled: %d modules (gateway/native.py)", len(native.modules))
    else:
        log.info("request path runs from source: no native build matching it (VGATE_NATIVE=0?)")
    config = uvicorn.Config(
        # Replaced before serving: by the app built below (one worker), or by each
        # worker's own (gateway/cli/workers.py: serve_worker, from the environment).
        "gateway.app:app_from_environment",
        factory=True,
        host=server.host,
        port=server.port,
        http=limited_protocol(ConnectionLimits.from_settings(server)),
        loop="uvloop",
        access_log=False,
        log_level=server.log_level,
        log_config=uvicorn_log_config(server.log_format) or LOGGING_CONFIG,
        backlog=4096,
        timeout_keep_alive=server.keepalive_timeout_s,
        timeout_graceful_shutdown=server.shutdown_timeout_s,  # then app closes (bounded)
        proxy_headers=False,  # no use for client addresses; one middleware less per request
        server_header=False,
    )
    if server.workers > 1:
        supervisor = WorkerSupervisor(config, server.workers, drain_s=server.shutdown_timeout_s)
        supervisor.run()
        if supervisor.failed_to_start:
            sys.exit(STARTUP_FAILURE)
        return
    from gateway.app import create_app

    size_young_generation()  # (workers > 1: each worker, in app_from_environment)
    app = create_app(settings, on_engines_ready)
    config.app, config.factory = app, False
    serving = DrainingServer(config, readiness_drain(app), engines_now(app))
    with contextlib.suppress(KeyboardInterrupt):
        serving.run()
    if not serving.started:  # what uvicorn.run does for one worker
        sys.exit(STARTUP_FAILURE)


def operator_location(settings: Settings) -> str:
    """Where /metrics, /sd/engines, the detailed /ready and /admin/* are served."""
    server = settings.server
    if server.admin_port is not None:
        return f"on http://{server.admin_host}:{server.admin_port}"
    if settings.auth.admin_key is not None:
        return "on the public port, behind auth.admin_key"
    return "off (set server.admin_port or auth.admin_key)"
