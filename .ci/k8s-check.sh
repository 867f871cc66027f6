#!/usr/bin/env bash
# Validates the Kubernetes manifests in k8s/ and checks their probes against the real server.
# Usage: bash .ci/k8s-check.sh   (from anywhere; needs python3 and PyPI, nothing installed by hand)
set -euo pipefail
cd "$(dirname "$0")/.."

# A throw-away venv: the pinned tools plus the app's own requirements, so run.py starts as in production.
# The install is most of the run time (kubernetes-validate ships every Kubernetes version's schemas).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
if ! timeout 900 "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r requirements.txt -r .ci/k8s-requirements.txt 2>"$work/pip.log"; then
    cat "$work/pip.log"
    echo "FAIL k8s-check: could not install the pinned tools (requirements.txt, .ci/k8s-requirements.txt)"
    echo "0 passed, 1 failed"
    exit 1
fi

# Bounded: four server starts (one real, three self-tests) of at most 30 s each; about 15 s in practice.
status=0
timeout -k 10 300 "$work/venv/bin/python" .ci/k8s_check.py k8s || status=$?
if [ "$status" = 124 ]; then
    echo "FAIL k8s-check: did not finish within 300 s"
    echo "0 passed, 1 failed"
fi
exit "$status"
