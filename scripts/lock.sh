#!/usr/bin/env bash
# Regenerates the hash-pinned lock files from pyproject.toml:
#   requirements/gateway.lock   the runtime dependencies (what the images install)
#   requirements/dev.lock       the runtime plus every extra (what scripts/bootstrap.sh installs)
# Both are for CPython 3.11 on Linux x86_64, the only platform vgate ships on: the
# resolution (and so any environment marker) is this interpreter's, while the hashes
# cover every file of each pinned release, so pip may pick any wheel of it.
#
# Usage:
#   scripts/lock.sh                          re-lock after editing pyproject.toml; pins that
#                                            still satisfy it are kept
#   scripts/lock.sh --upgrade                move every pin to the newest allowed release
#   scripts/lock.sh --upgrade-package NAME   move one package (repeatable)
# Any argument is passed to both pip-compile runs.
#
# Environment:
#   PYTHON            a CPython 3.11 interpreter (default: python3)
#   VGATE_LOCK_VENV   where pip-tools is installed (default: $TMPDIR/vgate-lock-tools);
#                     never the project's venv, so the locks do not depend on what is in it
#
# pip-compile reads pip's own configuration (pip.conf, PIP_* variables), so an index
# mirror configured there is searched too and its files are hashed alongside PyPI's:
# `pip install --require-hashes` then accepts whichever copy it downloads. No index URL
# or path is written into the locks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TOOLS="${VGATE_LOCK_VENV:-${TMPDIR:-/tmp}/vgate-lock-tools}"
PIP_VERSION=26.3
PIP_TOOLS_VERSION=7.6.2

log() { printf '[lock] %s\n' "$*" >&2; }

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  log "$PYTHON is not CPython 3.11; the locks are for 3.11 (set PYTHON)"
  exit 1
fi

if ! "$TOOLS/bin/pip-compile" --version 2>/dev/null | grep -q " $PIP_TOOLS_VERSION\$"; then
  log "installing pip-tools $PIP_TOOLS_VERSION into $TOOLS"
  "$PYTHON" -m venv --clear "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check \
    "pip==$PIP_VERSION" "pip-tools==$PIP_TOOLS_VERSION"
fi

cd "$ROOT"
mkdir -p requirements
compile() {
  local out="$1"
  shift
  log "writing $out"
  CUSTOM_COMPILE_COMMAND="scripts/lock.sh" "$TOOLS/bin/pip-compile" \
    --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
    --output-file "$out" "$@" pyproject.toml
}
# dev.lock first; gateway.lock is then constrained by it, so a package in both is
# pinned to the same version in both (tests/unit/test_packaging.py checks it).
compile requirements/dev.lock --extra dev "$@"
compile requirements/gateway.lock --constraint requirements/dev.lock "$@"
