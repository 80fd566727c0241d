# Sourced by the scripts in this folder: picks the Python that llmkit is (or will be) installed into.
#   1. $PYTHON if set; 2. the active virtualenv; 3. ./.venv if it exists;
#   4. python3, unless its pip refuses system-wide installs (PEP 668), in which case ./.venv is created.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -x "$root/.venv/bin/python" ]; then
  PY="$root/.venv/bin/python"
elif python3 -c 'import sys, sysconfig, pathlib; sys.exit(pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists())'; then
  PY="$(command -v python3)"
else
  echo "setup: this python3 does not allow system-wide installs; creating $root/.venv" >&2
  python3 -m venv "$root/.venv"
  PY="$root/.venv/bin/python"
fi
export PY
