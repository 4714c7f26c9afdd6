"""The sweep mode's command-line flags (``gateway_overhead --sweep/--full``) and their checks.

Kept apart from :mod:`benchmarks.gateway_overhead` so that the (a)-(c) benchmark's
parser stays readable, and shared with :mod:`benchmarks.python_floor` for the two
flags that choose the harness: ``--loadgen`` (what sends non-streaming loads) and
``--upstream`` (the engine every gateway points at). The defaults are the harness
used before issue #16 asked for ``wrk`` and a bare upstream.
"""

from __future__ import annotations

import argparse

from benchmarks.wrk import wrk_path

#: ``--upstream`` → the module run as the engine.
UPSTREAMS = {"stub": "engines.stub", "bare": "benchmarks.bare_upstream"}
#: ``--loadgen``: this process's client (:mod:`benchmarks.loadgen`) or ``wrk``.
LOADGENS = ("python", "wrk")


def add_harness_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--loadgen`` and ``--upstream``."""
    group.add_argument(
        "--loadgen", choices=LOADGENS, default="python",
        help="non-streaming loads: this process's client, or wrk (issue #16)",
    )  # fmt: skip
    group.add_argument(
        "--upstream", choices=sorted(UPSTREAMS), default="stub",
        help="the engine: engines.stub, or benchmarks.bare_upstream (issue #16)",
    )  # fmt: skip


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep mode's group of flags."""
    sweep = parser.add_argument_group("sweep mode (--sweep, --full)")
    sweep.add_argument("--sweep", action="store_true", help="paired rounds at --levels instead")
    sweep.add_argument("--full", action="store_true", help="sweep with auth + limits + cache on")
    sweep.add_argument("--levels", type=levels, default=[1, 16, 64, 256], help="e.g. 1,64")
    sweep.add_argument("--rounds", type=int, default=3, help="paired rounds per level")
    sweep.add_argument("--hold-streams", type=int, default=1000, help="0: skip the RSS part")
    sweep.add_argument("--hold-seconds", type=float, default=10.0, help="each held stream lasts")
    add_harness_arguments(sweep)


def levels(text: str) -> list[int]:
    """``1,16,64`` → ``[1, 16, 64]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def wrk_problem(args: argparse.Namespace) -> str | None:
    """Why ``--loadgen wrk`` cannot run here (wrk is not installed), or None."""
    if args.loadgen == "wrk" and wrk_path() is None:
        return "--loadgen wrk: wrk is not installed (apt-get install wrk), or use --loadgen python"
    return None


def sweep_problem(args: argparse.Namespace) -> str | None:
    """Why these arguments cannot run (``--loadgen``/``--upstream`` belong to the sweep
    mode; wrk must be installed), or None."""
    if not (args.sweep or args.full) and (args.loadgen != "python" or args.upstream != "stub"):
        return "--loadgen and --upstream belong to the sweep mode: add --sweep or --full"
    return wrk_problem(args)


def loadgen_label(args: argparse.Namespace) -> str:
    """What sent the load to which upstream, for the tables' heading."""
    if args.loadgen == "wrk":
        return f"wrk (streams: the {args.client} client), {args.upstream} upstream"
    return f"{args.client} client, {args.upstream} upstream"
