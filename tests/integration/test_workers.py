"""``server.workers > 1`` under the gateway's own supervisor (``gateway/cli/workers.py``)
keeps what uvicorn's did: a worker that dies is replaced, a worker that fails at
start-up stops them all (it would fail the same way again, and the gateway exits
with uvicorn's start-up failure status, as with one worker), and SIGTERM ends every
worker and the supervisor with status 0. (Draining itself: ``test_draining.py``.)
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from uvicorn.config import STARTUP_FAILURE

from gateway.cli.workers import WorkerSupervisor
from gateway.observability.worker_metrics import WorkerPlace
from tests.helpers.processes import free_port
from tests.helpers.waiting import holds_soon
from tests.integration.conftest import STUB_MODEL
from tests.integration.test_operator_listener import _listening_pids
from tests.integration.test_shutdown import gateway_process, stub_engine, wait_for

NO_STORE = {"memory_max_bytes": 0}
"""Several workers without Redis store no responses (each would keep its own)."""


def test_a_worker_that_dies_is_replaced(tmp_path: Path) -> None:
    with stub_engine() as (engine_url, _):
        config = {"models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
                  "responses": NO_STORE, "server": {"workers": 2}}  # fmt: skip
        with gateway_process(config, tmp_path) as (gateway, port, admin, log_path):
            wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
            first = _listening_pids(admin)
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(_listening_pids(admin) - first) == 1
                     and len(_listening_pids(admin)) == 2, 30, "a new worker")  # fmt: skip
            assert victim not in _listening_pids(admin)
            for _ in range(6):  # both workers answer (the kernel picks one per connection)
                with httpx.Client() as client:
                    assert client.get(f"http://127.0.0.1:{port}/ready").status_code == 200
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=30)
            log = log_path.read_text()
    assert gateway.returncode == 0, log[-3000:]
    assert f"Child process [{victim}] died" in log, log


def test_an_operator_port_taken_stops_the_start(tmp_path: Path) -> None:
    """The operator port is taken by a socket without ``SO_REUSEPORT``: the gateway does
    not start (the supervisor checks before any worker binds), with uvicorn's start-up
    failure status, as with one worker; no worker is started, let alone restarted."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        admin = taken.getsockname()[1]
        config = {"models": [{"name": STUB_MODEL, "endpoints": ["http://127.0.0.1:9"]}],
                  "responses": NO_STORE, "server": {"workers": 2, "admin_port": admin}}  # fmt: skip
        path = tmp_path / "vgate.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                "--port", str(free_port())]  # fmt: skip
        process = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    log = process.stdout + process.stderr
    assert "is in use" in log and "Child process" not in log, log[-3000:]
    assert process.returncode == STARTUP_FAILURE, log[-3000:]


def _fail_at_start_up(
    config: uvicorn.Config, place: WorkerPlace, sockets: list[socket.socket]
) -> None:
    """A worker whose start fails as uvicorn's does (its lifespan or its bind)."""
    sys.exit(STARTUP_FAILURE)


def test_a_worker_that_fails_at_start_up_stops_the_supervisor() -> None:
    """Every worker's start fails: the supervisor stops (and the gateway exits 3)
    instead of restarting them for ever."""
    config = uvicorn.Config("gateway.app:app_from_environment", port=free_port())
    supervisor = WorkerSupervisor(config, 2, _fail_at_start_up, poll_s=0.05, drain_s=1.0)
    supervisor.run()  # returns: it stopped by itself
    assert supervisor.failed_to_start


def _report_place_then_fail(
    config: uvicorn.Config, place: WorkerPlace, sockets: list[socket.socket]
) -> None:
    """A worker that writes down the place it was given (where the test says), then
    fails its start once every worker has (the first to fail stops the others)."""
    mode = stat.S_IMODE(os.stat(place.run_dir).st_mode)
    reports = Path(os.environ["VGATE_TEST_PLACES"])
    (reports / f"worker-{place.index}").write_text(f"{place.count} {place.run_dir} {mode:o}")
    holds_soon(lambda: len(list(reports.iterdir())) == place.count, 30, "every report")
    sys.exit(STARTUP_FAILURE)


def test_each_worker_is_told_its_place_in_a_private_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the workers serve their metrics to each other: every worker gets its own
    index and the same directory, private to the gateway's user (0700), which the
    supervisor removes when it stops."""
    monkeypatch.setenv("VGATE_TEST_PLACES", str(tmp_path))
    config = uvicorn.Config("gateway.app:app_from_environment", port=free_port())
    supervisor = WorkerSupervisor(config, 2, _report_place_then_fail, poll_s=0.05, drain_s=1.0)
    supervisor.run()
    reports = sorted(path.name for path in tmp_path.iterdir())
    assert reports == ["worker-0", "worker-1"]
    seen = {(tmp_path / name).read_text() for name in reports}
    assert len(seen) == 1  # one directory for both
    count, run_dir, mode = seen.pop().split(" ")
    assert (count, mode) == ("2", "700")
    assert not Path(run_dir).exists()


def test_refused_heads_get_ids_no_other_worker_gave(tmp_path: Path) -> None:
    """A head refused before it reaches the app (here HTTP/0.9) gets an ``x-request-id``
    from the connection limits, which uvicorn pickles into each worker: every worker
    drew the same ids in the same order (half of these 40 were duplicates)."""
    config = {"models": [{"name": STUB_MODEL, "endpoints": ["http://127.0.0.1:9"]}],
              "responses": NO_STORE, "server": {"workers": 2}}  # fmt: skip
    with gateway_process(config, tmp_path) as (_gateway, port, admin, _log_path):
        wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
        ids = []
        for _ in range(40):  # a new connection each: the kernel spreads them over both
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /health\r\n\r\n")
                answer = b"".join(iter(lambda: sock.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.1 400 "), answer
            ids.append(answer.split(b"\r\nx-request-id: ", 1)[1].split(b"\r\n", 1)[0])
    assert len(set(ids)) == len(ids), sorted(ids)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_sighup_drains_and_stops_every_worker(tmp_path: Path) -> None:
    """SIGHUP (a closing terminal, or an operator used to uvicorn's restart) stops the
    gateway as SIGTERM does: review found it killed the supervisor alone, leaving its
    workers serving the port with no parent."""
    with stub_engine() as (engine_url, _):
        config = {"models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
                  "responses": NO_STORE, "server": {"workers": 2}}  # fmt: skip
        with gateway_process(config, tmp_path) as (gateway, _port, admin, log_path):
            wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
            workers = _listening_pids(admin)
            gateway.send_signal(signal.SIGHUP)
            gateway.wait(timeout=30)
            wait_for(lambda: all(_gone(pid) for pid in workers), 30, "the workers to exit")
            log = log_path.read_text()
    assert gateway.returncode == 0, log[-3000:]
    assert "Received SIGHUP, draining the workers." in log, log[-3000:]


def test_a_worker_that_cannot_start_again_is_replaced_after_growing_pauses(
    tmp_path: Path,
) -> None:
    """The config file broken while the gateway serves, then a worker dies: each
    replacement dies loading it (status 1). They are started again after 1 s, 2 s, 4 s,
    ... (hunt: a new interpreter every half second, for ever), while the other worker
    serves on."""
    config = {"models": [{"name": STUB_MODEL, "endpoints": ["http://127.0.0.1:9"]}],
              "responses": NO_STORE, "server": {"workers": 2}}  # fmt: skip
    with gateway_process(config, tmp_path) as (gateway, port, admin, log_path):
        wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
        (tmp_path / "vgate.yaml").write_text("server: [\n")
        os.kill(min(_listening_pids(admin)), signal.SIGKILL)
        wait_for(lambda: "starting another in 4 s" in log_path.read_text(), 60, "the third pause")
        log = log_path.read_text()
        # the one killed (it had just started too), then two that could not start
        assert log.count("died (exit ") == 3 and log.count("died (exit 1)") == 2, log[-3000:]
        with httpx.Client() as client:  # the other worker serves all along
            assert client.get(f"http://127.0.0.1:{port}/health").status_code == 200
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=30)
    assert gateway.returncode == 0


def test_a_worker_that_cannot_drain_is_killed_after_the_deadline(tmp_path: Path) -> None:
    """A stopped worker (SIGSTOP) cannot drain: it is killed ``shutdown_timeout_s`` + 10 s
    after the drain began (hunt: the gateway never exited)."""
    config = {"models": [{"name": STUB_MODEL, "endpoints": ["http://127.0.0.1:9"]}],
              "responses": NO_STORE, "server": {"workers": 2, "shutdown_timeout_s": 1}}  # fmt: skip
    with gateway_process(config, tmp_path) as (gateway, _port, admin, log_path):
        wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
        stopped = min(_listening_pids(admin))
        os.kill(stopped, signal.SIGSTOP)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=40)
        log = log_path.read_text()
    assert gateway.returncode == 0, log[-3000:]
    assert f"Child process [{stopped}] still running" in log, log[-3000:]
    assert _gone(stopped)


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    """The supervisor killed outright (SIGKILL, the OOM killer): its workers get SIGTERM
    and drain (hunt: they served on, with no parent)."""
    config = {"models": [{"name": STUB_MODEL, "endpoints": ["http://127.0.0.1:9"]}],
              "responses": NO_STORE, "server": {"workers": 2, "shutdown_timeout_s": 1}}  # fmt: skip
    with gateway_process(config, tmp_path) as (gateway, _port, admin, _log_path):
        wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
        workers = _listening_pids(admin)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)
        wait_for(lambda: all(_gone(pid) for pid in workers), 30, "the workers to exit")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_gateway_cannot_share_a_busy_operator_port(tmp_path: Path, workers: int) -> None:
    """The operator listener binds with ``SO_REUSEPORT`` (each worker its own), which
    let a second gateway with the same ``admin_port`` start and take half of the first
    one's ``/ready``, ``/metrics`` and ``/admin`` connections (hunt). It stops at
    start-up instead (status 3, as for a public port in use)."""
    config = {"models": [{"name": STUB_MODEL, "endpoints": ["http://127.0.0.1:9"]}],
              "responses": NO_STORE, "server": {"workers": 2}}  # fmt: skip
    with gateway_process(config, tmp_path) as (_first, _port, admin, _log_path):
        wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
        owners = _listening_pids(admin)
        second = {**config, "server": {"workers": workers, "admin_port": admin}}
        path = tmp_path / "second.yaml"
        path.write_text(yaml.safe_dump(second))
        argv = [sys.executable, "-m", "gateway", "serve", "--config", str(path),
                "--port", str(free_port())]  # fmt: skip
        process = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert process.returncode == STARTUP_FAILURE, (
            process.stdout[-2000:] + process.stderr[-2000:]
        )
        assert "is in use" in process.stdout + process.stderr
        assert _listening_pids(admin) == owners


def test_workers_start_under_a_long_temporary_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers' metrics sockets were made in ``$TMPDIR``: under one of ~80 characters
    their paths passed what a unix socket can bind, and every worker failed to start
    ("AF_UNIX path too long"). They now go to ``/tmp`` then."""
    long_dir = tmp_path / ("t" * 100)
    long_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(long_dir))
    with stub_engine() as (engine_url, _):
        config = {"models": [{"name": STUB_MODEL, "endpoints": [engine_url]}],
                  "responses": NO_STORE, "server": {"workers": 2}}  # fmt: skip
        with gateway_process(config, tmp_path) as (_, _port, admin, _log):
            wait_for(lambda: len(_listening_pids(admin)) == 2, 30, "both workers serving")
            url = f"http://127.0.0.1:{admin}/metrics"
            wait_for(lambda: b'worker="1"' in httpx.get(url).content
                     and b'worker="0"' in httpx.get(url).content, 30,
                     "every worker's figures in a scrape")  # fmt: skip
