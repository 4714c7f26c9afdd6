#!/usr/bin/env bash
# Installs what vgate needs, idempotently: the gateway virtualenv (.venv) with the
# project and its dev tools, and redis-server from Debian's packages when missing.
# Sourced by scripts/up.sh and scripts/test.sh; safe to run again (it skips done work).
# Third-party packages come from requirements/dev.lock, hash-checked (scripts/lock.sh
# writes it from pyproject.toml), so every machine gets the same files; the project
# itself is then installed editable without dependencies, so pip resolves nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VGATE_VENV:-$ROOT/.venv}"

log() { printf '[bootstrap] %s\n' "$*" >&2; }

# The interpreter the venv is made from: $PYTHON when set; else the distribution's
# /usr/bin/python3.11 when it can make venvs; else python3. Debian's and Ubuntu's
# CPython is built with PGO and LTO and linked statically; pyenv's default build is
# neither, and serves the gateway about 17% slower (CPU per request, paired rounds:
# benchmarks/RESULTS.md). The lock files are for CPython 3.11, any patch release.
pick_python() {
  if [ -n "${PYTHON:-}" ]; then
    printf '%s' "$PYTHON"
  elif /usr/bin/python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    printf '%s' /usr/bin/python3.11
  else
    printf '%s' python3
  fi
}

if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="$(pick_python)"
  log "creating virtualenv $VENV with $PYTHON ($("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
fi

# Reinstall only when pyproject.toml or the lock changed since the last install.
stamp="$VENV/.vgate-installed"
lock="$ROOT/requirements/dev.lock"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
  log "installing vgate and dev tools into $VENV (from ${lock#"$ROOT"/})"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r "$lock"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
  touch "$stamp"
fi

# Debian packages: redis-server always; kubectl (kubernetes-client, for `kubectl
# kustomize` in the deployment checks) when VGATE_BOOTSTRAP_KUBECTL=1 (scripts/test.sh).
packages=()
command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
# The compiled request path (gateway/native.py) needs a C compiler and Python.h.
include="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
compile_native=1
native_built=0
[ "${VGATE_NATIVE:-1}" = 0 ] && compile_native=0
if [ "$compile_native" = 1 ]; then
  command -v gcc >/dev/null 2>&1 || packages+=(gcc libc6-dev)
  if [ ! -f "$include/Python.h" ] && [ "${include#/usr/include/}" != "$include" ]; then
    packages+=("$(basename "$include")-dev")  # Debian's python3.11-dev, for its python3.11
  fi
fi
if [ "${VGATE_BOOTSTRAP_KUBECTL:-0}" = 1 ] && ! command -v kubectl >/dev/null 2>&1; then
  packages+=(kubernetes-client)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  log "installing ${packages[*]} from Debian's packages"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${packages[@]}" >/dev/null
fi

# The request path compiled with mypyc into build/native (scripts/build_native.py; about
# a minute, then only when a file of the gateway package changed). Without a compiler or Python.h the
# gateway runs from source, as it does with VGATE_NATIVE=0, and so it does when the build
# fails (a warning, not an error).
if [ "$compile_native" = 1 ]; then
  if command -v gcc >/dev/null 2>&1 && [ -f "$include/Python.h" ]; then
    if (cd "$ROOT" && "$VENV/bin/python" scripts/build_native.py) >&2; then
      native_built=1  # scripts/test.sh: the native tests then require the build
    else
      log "the native build failed (above): the gateway runs from source"
    fi
  else
    log "no C compiler or no Python.h: the gateway runs from source (slower; see gateway/native.py)"
  fi
fi
