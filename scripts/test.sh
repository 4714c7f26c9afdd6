#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, types, unit, integration
# and end-to-end tests. Usage: ./scripts/test.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
VENV="${VGATE_VENV:-$ROOT/.venv}"

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy --strict"
"$VENV/bin/mypy"
echo "== pytest"
"$VENV/bin/pytest" "$@"
