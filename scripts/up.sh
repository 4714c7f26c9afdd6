#!/usr/bin/env bash
# The whole stack on this machine: installs what it needs (gateway venv, redis-server,
# the vLLM engine venv), then `vgate up`
# (default model, engine, gateway). Usage: ./scripts/up.sh [vgate up flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh
scripts/install_engine.sh
exec "${VGATE_VENV:-$ROOT/.venv}/bin/vgate" up "$@"
