#!/usr/bin/env bash
# The whole test suite: installs what it needs (gateway venv, redis-server, kubectl
# for the deployment checks, the vLLM engine venv, the default model), then lint,
# types, unit, integration and end-to-end tests. Usage: ./scripts/test.sh [pytest args, default: every suite]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VGATE_BOOTSTRAP_KUBECTL=1 source scripts/bootstrap.sh
VENV="${VGATE_VENV:-$ROOT/.venv}"

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
"$VENV/bin/pytest" "$@"
