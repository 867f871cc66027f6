#!/usr/bin/env bash
# Real nginx and HAProxy in front of two template instances (issue 15): rolling restart under
# load, the keep-alive race, TRUST_PROXY behind a real proxy, request smuggling. See .ci/proxies.py.
# Usage: bash .ci/proxies.sh [--only trust,smuggle,rolling,race]   (as root; apt-get installs
# nginx and haproxy if missing). Bounded: about 3 minutes, at most 6; loopback only; under 200
# connections. Prints Markdown tables and "N passed, N failed"; non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids="$work/pids"
: >"$pids"
# Every process the driver started is in $pids (written as each one starts): stop them by PID
# even if the driver itself was killed, then remove the work folder.
cleanup() {
    local pid
    [ -n "${driver:-}" ] && kill "$driver" 2>/dev/null || true
    while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$pids"
    sleep 1
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$pids"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The proxies, from Debian's packages. Installing does not start them here (no systemd in a
# container; policy-rc.d or not, the driver starts its own on free loopback ports).
if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    if ! { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq \
            --no-install-recommends nginx haproxy; } >"$work/apt.log" 2>&1; then
        tail -20 "$work/apt.log"
        echo "FAIL proxies: could not install nginx and haproxy with apt-get"
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

# The app's Python: .venv when it has the pinned requirements (testing.sh makes it), else a
# throw-away venv, as .ci/k8s-check.sh makes.
python=.venv/bin/python
if ! { [ -x "$python" ] && "$python" -c 'import cherrypy, cheroot, prometheus_client' 2>/dev/null; }; then
    python3 -m venv "$work/venv"
    python="$work/venv/bin/python"
    if ! timeout 300 "$python" -m pip install --quiet --disable-pip-version-check \
            -r requirements.txt 2>"$work/pip.log"; then
        cat "$work/pip.log"
        echo "FAIL proxies: could not install requirements.txt"
        echo "0 passed, 1 failed"
        exit 1
    fi
fi

# Two instances, several proxies and a few hundred sockets at most: the usual 1024 is enough.
status=0
timeout -k 10 330 python3 .ci/proxies.py --python "$python" --work "$work" --pids "$pids" \
    --limit 300 "$@" &
driver=$!
wait "$driver" || status=$?
driver=
if [ "$status" = 124 ]; then
    echo "FAIL proxies: did not finish within 330 s"
    echo "0 passed, 1 failed"
fi
exit "$status"
