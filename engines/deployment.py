"""A model to serve as managed engines, and what is decided before any of them is spawned:
the port, the log file's path, and whether the engine can start at all.

Kept apart from :mod:`engines.supervisor` (which runs the engines) so that ``vgate up``
can check its deployments before serving, with no supervisor.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from engines.diagnosis import StartProblem, preflight
from engines.process import build_env
from engines.spec import LOG_KEEP, LOG_MAX_BYTES, EngineSpec


@dataclass(frozen=True)
class Deployment:
    """A model to serve: its spec and where its weights and interpreter are."""

    model: str
    spec: EngineSpec
    model_path: str
    python: str
    log_dir: Path
    advertise_host: str | None = None
    """The host gateways reach the engine at, when it differs from the bind address
    (``host: 0.0.0.0`` in a container: the pod or host IP)."""
    api_key: str | None = field(default=None, repr=False)
    """The model's configured engine key (None: each replica gets a generated one)."""
    log_max_bytes: int = LOG_MAX_BYTES
    """A replica's log is rotated before it passes this size (:mod:`engines.engine_log`)."""
    log_keep: int = LOG_KEEP
    """Rotated log files kept beside the current one."""


async def preflight_deployment(deployment: Deployment) -> StartProblem | None:
    """Why ``deployment``'s engines cannot start, found without starting one (None: no
    reason found). ``vgate up`` calls it before serving; slots before every spawn."""
    spec = deployment.spec
    env = build_env(spec, 0)
    return await preflight(spec, deployment.python, deployment.model_path, env)


def log_path(deployment: Deployment, replica: int) -> Path:
    """The replica's log file, checked to lie directly inside the log folder (the config
    already refuses names that are not path-safe; this is the last word)."""
    folder = deployment.log_dir.expanduser()
    path = folder / f"{deployment.model}-{replica}.log"
    if path.parent != folder or path.name in {".", ".."} or "\0" in path.name:
        raise ValueError(f"model name {deployment.model!r} would escape the log folder")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
