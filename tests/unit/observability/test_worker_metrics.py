"""``server.workers > 1``: one scrape merges every worker's exposition
(:mod:`gateway.observability.worker_metrics`): each family's header once, its samples
grouped and labelled ``worker``, and a worker that does not answer left out and
counted, not waited for."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability import worker_metrics
from gateway.observability.worker_metrics import (
    MISSING_FAMILY,
    WorkerMetrics,
    WorkerPlace,
    make_run_dir,
    merge_expositions,
)


def _exposition(requests: int, in_flight: int) -> bytes:
    """What one worker's registry renders: a labelled counter, an unlabelled gauge and
    a histogram (several sample names in one family)."""
    registry = CollectorRegistry()
    counter = Counter("vgate_requests", "Requests.", ["model"], registry=registry)
    counter.labels("m").inc(requests)
    Gauge("vgate_in_flight", "In flight.", registry=registry).set(in_flight)
    Histogram("vgate_seconds", "Seconds.", registry=registry, buckets=(1.0,)).observe(0.5)
    return generate_latest(registry)


def _samples(text: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {
        family.name: [(s.name, dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text.decode())
    }


def test_merge_groups_families_and_labels_every_sample_with_its_worker() -> None:
    merged = merge_expositions([(0, _exposition(3, 1)), (1, _exposition(4, 2))])
    text = merged.decode()
    for name in ("vgate_requests_total", "vgate_in_flight", "vgate_seconds"):
        assert text.count(f"# HELP {name} ") == 1 and text.count(f"# TYPE {name} ") == 1
    families = _samples(merged)  # parses: every family's samples stay together
    requests = [(s, labels, v) for s, labels, v in families["vgate_requests"]
                if s == "vgate_requests_total"]  # fmt: skip
    assert requests == [
        ("vgate_requests_total", {"worker": "0", "model": "m"}, 3.0),
        ("vgate_requests_total", {"worker": "1", "model": "m"}, 4.0),
    ]
    assert families["vgate_in_flight"] == [
        ("vgate_in_flight", {"worker": "0"}, 1.0),
        ("vgate_in_flight", {"worker": "1"}, 2.0),
    ]
    buckets = [labels for s, labels, _ in families["vgate_seconds"] if s == "vgate_seconds_bucket"]
    assert buckets == [
        {"worker": "0", "le": "1.0"},
        {"worker": "0", "le": "+Inf"},
        {"worker": "1", "le": "1.0"},
        {"worker": "1", "le": "+Inf"},
    ]
    assert families[MISSING_FAMILY] == [(MISSING_FAMILY, {}, 0.0)]


def test_a_family_only_one_worker_has_is_kept_and_empty_labels_get_the_worker() -> None:
    first = b"# HELP a A.\n# TYPE a gauge\na{} 1.0\n"
    second = b"# HELP b B.\n# TYPE b gauge\nb 2.0\n# HELP a A.\n# TYPE a gauge\na{} 3.0\n"
    merged = merge_expositions([(0, first), (2, second)], missing=1)
    assert merged.split(b"\n")[:6] == [
        b"# HELP a A.", b"# TYPE a gauge", b'a{worker="0"} 1.0', b'a{worker="2"} 3.0',
        b"# HELP b B.", b"# TYPE b gauge",
    ]  # fmt: skip
    families = _samples(merged)
    assert families["b"] == [("b", {"worker": "2"}, 2.0)]
    assert families[MISSING_FAMILY] == [(MISSING_FAMILY, {}, 1.0)]


async def test_scrape_merges_the_other_workers_and_counts_one_that_is_not_there(
    tmp_path: Path,
) -> None:
    """Worker 1 serves its figures on its socket; worker 2 never started (no socket):
    worker 0's scrape has its own and worker 1's figures and counts one missing."""
    place = WorkerPlace(0, 3, str(tmp_path))
    ours = WorkerMetrics(place, lambda: _exposition(3, 1))
    theirs = WorkerMetrics(WorkerPlace(1, 3, str(tmp_path)), lambda: _exposition(4, 2))
    await theirs.start()
    try:
        families = _samples(await ours.scrape())
    finally:
        await theirs.stop()
    totals = {labels["worker"]: v for s, labels, v in families["vgate_requests"]
              if s == "vgate_requests_total"}  # fmt: skip
    assert totals == {"0": 3.0, "1": 4.0}
    assert families[MISSING_FAMILY] == [(MISSING_FAMILY, {}, 1.0)]
    assert not place.socket_path(1).exists()  # stop removes its socket


async def test_a_worker_that_does_not_answer_is_skipped_after_the_timeout(
    tmp_path: Path,
) -> None:
    """A socket that accepts but never sends (a hung worker) costs the scrape its
    timeout, not more, and is counted missing; a stale socket file left by a dead
    worker is replaced when its place starts again."""
    place = WorkerPlace(0, 2, str(tmp_path))
    never = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await never.wait()

    hung = await asyncio.start_unix_server(hang, path=str(place.socket_path(1)))
    ours = WorkerMetrics(place, lambda: _exposition(3, 1), timeout_s=0.2)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        families = _samples(await ours.scrape())
        assert loop.time() - began < 2.0
    finally:
        hung.close()
        never.set()
    assert {labels["worker"] for _, labels, _ in families["vgate_in_flight"]} == {"0"}
    assert families[MISSING_FAMILY] == [(MISSING_FAMILY, {}, 1.0)]
    again = WorkerMetrics(WorkerPlace(1, 2, str(tmp_path)), lambda: _exposition(4, 2))
    await again.start()  # over the stale socket file of the hung one
    try:
        families = _samples(await ours.scrape())
    finally:
        await again.stop()
    assert families[MISSING_FAMILY] == [(MISSING_FAMILY, {}, 0.0)]


def test_a_run_directory_fits_a_unix_socket_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a long ``$TMPDIR`` the directory goes to ``/tmp``; when neither will do, an
    OSError says so (not "AF_UNIX path too long" from every worker)."""
    long_dir = tmp_path / ("t" * 100)
    long_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long_dir))
    run_dir = make_run_dir(12)
    try:
        assert Path(run_dir).parent == Path("/tmp")
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        assert len(str(WorkerPlace(11, 12, run_dir).socket_path(11))) <= 107
    finally:
        shutil.rmtree(run_dir)
    monkeypatch.setattr(worker_metrics, "_SHORT_TEMP_DIR", str(long_dir))
    with pytest.raises(OSError, match="set TMPDIR shorter"):
        make_run_dir(2)
    assert list(long_dir.iterdir()) == []  # the tries left nothing behind


def test_run_directories_of_gone_supervisors_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A supervisor killed with SIGKILL (the OOM killer) left its run directory and
    sockets behind for good: the next start removes those whose pid no longer runs."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    left = tmp_path / f"vgate-workers-{gone.pid}-abc"
    left.mkdir()
    (left / "worker-0.sock").touch()
    alive = tmp_path / f"vgate-workers-{os.getppid()}-def"
    alive.mkdir()
    other = tmp_path / "vgate-workers-notapid"
    other.mkdir()
    run_dir = make_run_dir(2)
    assert Path(run_dir).name.startswith(f"vgate-workers-{os.getpid()}-")
    assert not left.exists()
    assert alive.exists() and other.exists() and Path(run_dir).exists()
