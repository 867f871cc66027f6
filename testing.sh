#!/usr/bin/env bash
# Run the tests under coverage and print the report:
#   ./testing.sh          the site's tests (test.py), then the server's own (server/tests/)
#   ./testing.sh --site   test.py only: the quick check ./run.sh makes before each start
# Exits non-zero if a test fails, or (without --site) if tests cover under 90% of run.py:
# the quick check only warns, so a page without its test yet still starts.
# Works in the container image (dependencies installed there) and on a fresh machine,
# where it first creates .venv from requirements.txt.
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
command -v "$python" >/dev/null || python=python

# Are the pinned versions of requirements.txt importable by this Python?
has_pinned_requirements() {
  "$1" - <<'PY' 2>/dev/null
import importlib.metadata as metadata
for line in open('requirements.txt'):
    line = line.split('#')[0].strip()
    if line:
        name, version = line.split('==')
        assert metadata.version(name) == version, name
PY
}

if ! has_pinned_requirements "$python"; then
  if ! has_pinned_requirements .venv/bin/python; then
    echo "testing.sh: the pinned requirements are not installed; creating .venv from requirements.txt"
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  fi
  python=.venv/bin/python
fi

suites=(site server)
if [ "${1:-}" = --site ]; then suites=(site); shift; fi

"$python" -m coverage erase
status=0
"$python" -m coverage run test.py "$@" || status=$?
if [ "${#suites[@]}" -gt 1 ]; then
  "$python" -m coverage run -m server.tests "$@" || status=$?
fi
"$python" -m coverage combine --quiet
report=()
if [ "${#suites[@]}" -eq 1 ]; then report=(--omit 'server/*'); fi  # the site's files only
"$python" -m coverage report -m "${report[@]}"
if [ "$status" -ne 0 ]; then
  echo "testing.sh: tests failed" >&2
  exit "$status"
fi
if ! "$python" -m coverage report --include=run.py --fail-under=90 >/dev/null; then
  echo "testing.sh: coverage of run.py is under 90%: test your pages in YourTests (test.py)" >&2
  if [ "${#suites[@]}" -gt 1 ]; then exit 1; fi
  exit 0
fi
echo "testing.sh: all tests passed; run.py coverage at least 90%"
