#!/usr/bin/env bash
# The whole test suite: installs what it needs (gateway venv, redis-server, kubectl
# for the deployment checks, the vLLM engine venv, the default model), then lint,
# types, unit, integration and end-to-end tests. Usage: ./scripts/test.sh [pytest args, default: every suite]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VGATE_BOOTSTRAP_KUBECTL=1 source scripts/bootstrap.sh
VENV="${VGATE_VENV:-$ROOT/.venv}"
# From Debian's packages: chromium for the status page's browser test
# (tests/integration/test_status_browser.py), wrk for the benchmark harness's test
# (tests/integration/test_bench_harness.py: issue #16's load generator)
wanted=()
command -v chromium >/dev/null 2>&1 || wanted+=(chromium)
command -v wrk >/dev/null 2>&1 || wanted+=(wrk)
if [ "${#wanted[@]}" -gt 0 ]; then
  echo "== ${wanted[*]} (from Debian's packages)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${wanted[@]}" >/dev/null
fi

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== engine environment (vLLM CPU build) and the default model"
scripts/install_engine.sh
"$VENV/bin/vgate" models prepare
echo "== pytest: unit, integration, e2e (real vLLM)"
if [ "$#" -eq 0 ]; then set -- tests/unit tests/integration tests/e2e; fi
# Every child process's output (gateways, stubs, Redis) is kept in .test-logs/last;
# when a test fails, what uvicorn logged about broken answers (an exception in the
# application, an answer left incomplete) is printed after pytest's report.
export TEST_PROCESS_LOG_DIR="$ROOT/.test-logs/last"
# The compiled request path (gateway/native.py) was built: its tests require it.
if [ "${native_built:-0}" = 1 ]; then export TEST_REQUIRE_NATIVE=1; fi
rm -rf "$TEST_PROCESS_LOG_DIR"
status=0
# --durations: the slowest tests are named in every run's log (the suite's time is budgeted)
"$VENV/bin/pytest" --durations=20 "$@" || status=$?
if [ "$status" -ne 0 ] && [ -d "$TEST_PROCESS_LOG_DIR" ]; then
  broken="Exception in ASGI application|ASGI callable returned without|unhandled error on"
  for log in $(grep -l -E "$broken" "$TEST_PROCESS_LOG_DIR"/*.log 2>/dev/null | head -5); do
    echo "== $(basename "$log"): what it logged about broken answers"
    grep -E -A12 "$broken" "$log" | head -n 40
  done
  echo "== pytest exited with $status (its summary is above; child logs: $TEST_PROCESS_LOG_DIR)"
fi
exit "$status"
