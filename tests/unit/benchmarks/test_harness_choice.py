"""Choosing the harness: ``--loadgen``/``--upstream`` (defaults unchanged, wrk only where
it can run) and the load generator's CPU, which counts wrk as a waited-for child."""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys

import pytest

from benchmarks import sweep_args
from benchmarks.loadgen import run_blocking
from benchmarks.sampling import loadgen_cpu_seconds, own_cpu_seconds
from benchmarks.sweep import Load
from benchmarks.wrk import run_wrk


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sweep_args.add_sweep_arguments(parser)
    parser.add_argument("--client", default="raw")
    return parser.parse_args(argv)


def test_the_defaults_are_the_harness_of_before() -> None:
    args = parse()
    assert (args.loadgen, args.upstream, args.levels) == ("python", "stub", [1, 16, 64, 256])
    assert sweep_args.sweep_problem(args) is None
    assert sweep_args.loadgen_label(args) == "raw client, stub upstream"


def test_the_harness_flags_belong_to_the_sweep_mode() -> None:
    problem = sweep_args.sweep_problem(parse("--upstream", "bare"))
    assert problem is not None and "--sweep or --full" in problem
    assert sweep_args.sweep_problem(parse("--full", "--upstream", "bare")) is None


def test_wrk_missing_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep_args, "wrk_path", lambda: None)
    problem = sweep_args.sweep_problem(parse("--full", "--loadgen", "wrk"))
    assert problem is not None and "wrk is not installed" in problem
    assert sweep_args.wrk_problem(parse("--full")) is None


def test_a_load_names_its_runner() -> None:
    common: tuple[bytes, bool, dict[str, str], float, float] = (b"{}", False, {}, 1.0, 0.0)
    assert Load(*common).runner() is run_blocking
    wrk = Load(*common, loadgen="wrk", loadgen_cpu=1).runner()
    assert isinstance(wrk, functools.partial)
    assert wrk.func is run_wrk and wrk.keywords == {"cpu": 1}
    with pytest.raises(ValueError, match="unknown load generator"):
        Load(*common, loadgen="ab").runner()


def test_a_waited_for_child_counts_as_the_load_generator() -> None:
    own, total = own_cpu_seconds(), loadgen_cpu_seconds()
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    assert loadgen_cpu_seconds() - total >= 0.25 + (own_cpu_seconds() - own)
