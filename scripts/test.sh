#!/usr/bin/env bash
# Install llmkit with its test tools (scripts/setup.sh dev) and run the test suite, offline.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bash "$here/setup.sh" dev
source "$here/_python.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# One worker per core (pytest-xdist): most tests are single-threaded Python (config checks, generated bad
# inputs); tests/conftest.py splits torch's threads between the workers.
exec "$PY" -m pytest -q -n auto --dist loadgroup "$@"
