#!/usr/bin/env bash
# Hostile-client check (issue 13): framing, smuggling, slow clients, nofile 1,024, log floods,
# tried from the attacker's side against the real server (`python run.py`) on loopback.
# Usage: bash .ci/hostile.sh [--only framing,smuggling,...] [--repo OTHER_CHECKOUT]
#        (from anywhere: it checks the checkout it is in unless --repo names another)
# Bounded: the whole run, venv included, stops within 5 minutes; at most 2,000 client connections
# open at once, loopback only. Prints tables and "N passed, N failed"; non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# A venv of the pinned requirements, kept between runs under a gitignored directory and rebuilt
# when requirements.txt changes. The driver itself uses only the standard library.
venv=.ci/.hostile-venv
stamp=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    if ! timeout 120 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            -r requirements.txt >"$venv/pip.log" 2>&1; then
        cat "$venv/pip.log"
        echo "FAIL hostile: could not install requirements.txt"
        echo "0 passed, 1 failed"
        exit 1
    fi
    echo "$stamp" >"$venv/.stamp"
fi

# 2,000 client sockets plus the servers' own: more than the usual soft limit of 1,024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The driver starts every server it uses and stops each by PID (its own finally blocks and a
# watchdog). This trap is the last line: the driver's process group, by its PID, on any exit.
driver=
cleanup() {
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM -- "-$driver" 2>/dev/null || kill -TERM "$driver" 2>/dev/null || true
        sleep 2
        kill -KILL -- "-$driver" 2>/dev/null || kill -KILL "$driver" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# timeout puts the driver in its own process group (its PID), so the trap reaches its servers too.
status=0
timeout -k 10 270 "$venv/bin/python" .ci/hostile.py "$@" &
driver=$!
wait "$driver" || status=$?
driver=
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "FAIL hostile: did not finish within 270 s"
    echo "0 passed, 1 failed"
fi
exit "$status"
