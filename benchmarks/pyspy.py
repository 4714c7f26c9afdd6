"""Sampling a process with py-spy while load runs, and reading where its time went.

py-spy's ``raw`` output is one line per distinct stack, ``frame;frame;...;leaf N``
(the collapsed format that flamegraph.pl and speedscope.app import). We rank
functions by self time (the leaf of a sample) and by inclusive time (anywhere
in a sample's stack).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from pathlib import Path

_LINENO = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH; None when absent."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record_argv(exe: str, pid: int, seconds: float, out: Path) -> list[str]:
    """Record ``pid`` for ``seconds`` without pausing it (so it keeps its pace)."""
    return [
        exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", "250", "--nonblocking", "--format", "raw", "--output", str(out),
    ]  # fmt: skip


def _frame(frame: str) -> str:
    return _LINENO.sub(")", frame.strip())


def hotspots(collapsed: Path, top: int = 15) -> tuple[int, list[tuple[str, float, float]]]:
    """``(samples, [(function, self share, inclusive share), ...])`` by self share."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if f.strip()] or ["(no Python stack)"]
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return 0, []
    ranked = [(name, n / total, inclusive[name] / total) for name, n in self_time.most_common(top)]
    return total, ranked


def describe(collapsed: Path, top: int = 15) -> str:
    """A small table of the functions with the most self time."""
    total, ranked = hotspots(collapsed, top)
    if not total:
        return f"no samples in {collapsed}"
    lines = [
        f"py-spy: {total} samples of the gateway; top functions by self time",
        "  self   incl  function",
    ]
    lines += [f"  {s:5.1%} {i:6.1%}  {name}" for name, s, i in ranked]
    packages = ", ".join(f"{name} {share:.0%}" for name, share in by_package(collapsed)[:8])
    lines.append(f"  self time by package: {packages}")
    return "\n".join(lines)


def _package(frame: str) -> str:
    """``aiohttp`` for ``f (aiohttp/client.py:1)``; ``<frozen os>`` and the like as they are."""
    where = frame[frame.rfind("(") + 1 :].rstrip(")")
    return where.split("/", 1)[0] if "/" in where else where.split(":", 1)[0]


def by_package(collapsed: Path) -> list[tuple[str, float]]:
    """Self time per top-level package (the first path component of the leaf frame)."""
    shares: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1].strip()
        shares[_package(leaf) if leaf else "(no Python stack)"] += int(count_text)
        total += int(count_text)
    return [(name, n / total) for name, n in shares.most_common()] if total else []
