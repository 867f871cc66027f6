#!/usr/bin/env bash
# Every "Change it" and "Remove it" recipe of README.md, applied to a fresh copy exactly as
# printed, then tested and served (.ci/recipes.py says how). A README edit that breaks one fails.
#   bash .ci/recipes.sh [NAME...]      # from the project root; ends with "N passed, N failed"
set -euo pipefail
cd "$(dirname "$0")/.."

# One Python with the pinned requirements for every copy, so no copy builds its own .venv.
python=${PYTHON:-python3}
if ! "$python" -c 'import cherrypy, cheroot, coverage, mock, prometheus_client' 2>/dev/null; then
  venv=$(mktemp -d)
  trap 'rm -rf "$venv"' EXIT
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt \
    >"$venv/pip.log" 2>&1 || { cat "$venv/pip.log"; exit 1; }
  python=$venv/bin/python
fi
# Run under a time limit: a hung server must fail CI, not hold it.
PYTHON=$python timeout 900 "$python" .ci/recipes.py "$@"
