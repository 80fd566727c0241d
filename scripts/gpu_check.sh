#!/usr/bin/env bash
# llmkit on one CUDA GPU without network, in at most 8 minutes: one JSON line per check.
#
#   scripts/gpu_check.sh --prepare [--python-version 3.12] [--add PKG]... [--without PKG]...
#       On a machine with network, beforehand: llmkit's wheel and what a CUDA machine with torch, transformers,
#       accelerate and peft lacks (datasets, evaluate, trl, gguf, deepspeed if it builds without compiling, and
#       their needs) into gpu-wheels/ (at most 60 MB; git ignores it), which travels with the checkout.
#   scripts/gpu_check.sh [--data-dir ../shared/data]
#       On the GPU machine: refuses (exit 2) without CUDA; installs from gpu-wheels/ with pip --no-index, never
#       touching torch (pinned to the installed build); then MiniLM SST-2 finetune in bf16 (tokens/s, MFU, dev
#       accuracy), SmolLM2 LoRA SFT (tokens/s, padding), a 2-layer GPT pretrain with DeepSpeed ZeRO-2, and
#       `llmkit smoke configs/` on CUDA (scripts/bench/gpu_checks.py).
#
# PYTHON (default python3) is the interpreter that holds the machine's torch; LLMKIT_GPU_WHEELS moves the folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS="${LLMKIT_GPU_WHEELS:-$ROOT/gpu-wheels}"
CHECKS="$ROOT/scripts/bench/gpu_checks.py"

if [[ "${1:-}" == "--prepare" ]]; then
    shift
    exec "$PYTHON" "$CHECKS" prepare --wheels "$WHEELS" "$@"
fi

DATA_DIR="$ROOT/../shared/data"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data-dir) DATA_DIR="${2:?--data-dir needs a folder}"; shift 2 ;;
        *) echo "gpu_check: unknown argument '$1'; use --prepare [...] or --data-dir DIR" >&2; exit 2 ;;
    esac
done

# 1. CUDA, before anything is installed or written.
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: CUDA is not available here (torch.cuda.is_available() is False, or '$PYTHON' has no torch):" \
         "this check needs one CUDA GPU and that machine's CUDA build of torch. Nothing was installed." >&2
    exit 2
fi
if ! compgen -G "$WHEELS/llmkit-*.whl" >/dev/null; then
    echo "gpu_check: no llmkit wheel in $WHEELS: run 'scripts/gpu_check.sh --prepare' on a machine with network" \
         "first and bring the folder along (or set LLMKIT_GPU_WHEELS)." >&2
    exit 2
fi

# 2. Install offline from the folder; torch stays the machine's own (a constraint pins the installed build).
START=$(date +%s)
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
"$PYTHON" -c 'import torch; print(f"torch=={torch.__version__}")' > "$CONSTRAINTS"
PACKAGES=(llmkit datasets evaluate trl gguf)
if compgen -G "$WHEELS/deepspeed-*.whl" >/dev/null; then PACKAGES+=(deepspeed); fi
if ! "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --constraint "$CONSTRAINTS" \
        "${PACKAGES[@]}"; then
    echo "gpu_check: the offline install from $WHEELS failed (see pip's message above): a package this machine" \
         "lacks is not in the folder; add it with 'scripts/gpu_check.sh --prepare --add NAME'." >&2
    exit 1
fi
echo "{\"check\": \"install\", \"ok\": true, \"seconds\": $(( $(date +%s) - START )), \"packages\": \"${PACKAGES[*]}\"}"

# 3. The checks (each with its own time limit inside; this one caps them all).
cd "$ROOT"
timeout 420 "$PYTHON" "$CHECKS" run --data-dir "$DATA_DIR"
