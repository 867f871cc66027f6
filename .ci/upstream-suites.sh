#!/usr/bin/env bash
# cheroot's and CherryPy's own test suites, from their pinned sdists, against the template's
# server (issue 13). Run from anywhere: `bash .ci/upstream-suites.sh`.
#
# Each suite runs twice: as published (stock), to learn what passes on this machine, and with
# the template's server swapped in (.ci/upstream/plugin.py). Tests that passed on stock and
# not with the template are run again, on their own, in both modes; those that fail again
# with the template fail this step unless .ci/upstream-allowlist.txt lists them with a reason.
# Everything is installed into a throw-away venv under .ci/upstream-work/ (gitignored).
# The last line printed is "N passed, N failed".
#
# Environment: PYTHON (default python3, 3.11 expected), UPSTREAM_TIMEOUT (seconds per test,
# default 20), UPSTREAM_KEEP=1 to reuse the extracted sources (default: fresh each run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CI=$ROOT/.ci
WORK=$CI/upstream-work
PYTHON=${PYTHON:-python3}
TIMEOUT=${UPSTREAM_TIMEOUT:-20}

pin() {  # the version requirements.txt pins for package $1
    sed -n "s/^$1==\([^ #]*\).*/\1/Ip" requirements.txt | head -n 1
}
CHEROOT=$(pin cheroot)
CHERRYPY=$(pin CherryPy)
[ -n "$CHEROOT" ] && [ -n "$CHERRYPY" ] || {
    echo "requirements.txt must pin cheroot==X and CherryPy==Y" >&2; exit 2; }

mkdir -p "$WORK"

# -- the venv: made again whenever the pins change -------------------------------------
STAMP="cheroot==$CHEROOT CherryPy==$CHERRYPY $("$PYTHON" -V 2>&1) $(sha256sum < "$CI/upstream-requirements.txt")"
if [ ! -x "$WORK/venv/bin/python" ] || [ "$(cat "$WORK/venv/.stamp" 2>/dev/null)" != "$STAMP" ]; then
    echo "== venv for the upstream suites ($WORK/venv)"
    rm -rf "$WORK/venv" "$WORK/sdist"
    "$PYTHON" -m venv "$WORK/venv"
    pip() { "$WORK/venv/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 \
                | { grep -v '^WARNING: Location' || true; }; }  # a local index's noise
    pip install -r "$CI/upstream-requirements.txt"
    pip download --no-binary :all: --no-deps -d "$WORK/sdist" "cheroot==$CHEROOT" "CherryPy==$CHERRYPY"
    # The suites import the packages from their extracted sources; installing the sdists too
    # gives them their metadata (entry points, versions). Their dependencies are pinned above.
    pip install --no-deps "$WORK"/sdist/*.tar.gz
    "$WORK/venv/bin/python" -c 'import cheroot, cherrypy, pytest_timeout'  # all went in
    echo "$STAMP" > "$WORK/venv/.stamp"
fi
PY=$WORK/venv/bin/python

# -- the sources: fresh, since the suites write files into them ------------------------
src() {  # extracted sdist folder of package $1 version $2
    echo "$WORK/src/$(echo "$1" | tr 'A-Z' 'a-z')-$2"
}
CHEROOT_SRC=$(src cheroot "$CHEROOT")
CHERRYPY_SRC=$(src CherryPy "$CHERRYPY")
if [ "${UPSTREAM_KEEP:-0}" != 1 ] || [ ! -d "$CHEROOT_SRC" ] || [ ! -d "$CHERRYPY_SRC" ]; then
    rm -rf "$WORK/src"
    mkdir -p "$WORK/src"
    for sdist in "$WORK"/sdist/*.tar.gz; do
        tar -xzf "$sdist" -C "$WORK/src"
    done
    # sdists are named in lower case since setuptools 69; older ones keep the project's case
    for dir in "$WORK"/src/*; do
        lower=$WORK/src/$(basename "$dir" | tr 'A-Z' 'a-z')
        [ "$dir" = "$lower" ] || mv "$dir" "$lower"
    done
fi
rm -f "$WORK"/*.json "$WORK"/*-candidates.txt

# -- running a suite -------------------------------------------------------------------
# -o addopts='': the suites' pytest.ini ask for coverage, xdist and junit output; the rest of
# their ini (warnings as errors, strict xfail...) stays. DeprecationWarnings are ignored: the
# pinned test dependencies are newer than the suites and warn about their use.
suite() {  # suite mode results-name [test ids...]
    local name=$1 mode=$2 results=$3
    shift 3
    local dir plugins
    if [ "$name" = cheroot ]; then
        dir=$CHEROOT_SRC
        plugins=(-p cheroot.test._pytest_plugin)
    else
        dir=$CHERRYPY_SRC
        plugins=()
    fi
    local tests=("$@")
    [ ${#tests[@]} -gt 0 ] || tests=("$name/test")
    (cd "$dir" && UPSTREAM_SUITE=$name UPSTREAM_CP_PORT=$CP_PORT UPSTREAM_SERVER=$mode UPSTREAM_REPO=$ROOT \
        UPSTREAM_RESULTS=$WORK/$results.json PYTHONPATH=$CI/upstream \
        timeout -k 10 600 "$PY" -m pytest -o addopts='' -p no:cacheprovider "${plugins[@]}" \
        -p plugin -q -rfE --timeout="$TIMEOUT" -W ignore::DeprecationWarning "${tests[@]}" \
        > "$WORK/$results.log" 2>&1) || true  # the comparison decides, not pytest's status
    echo "   $name, $mode server: $(grep -E ' in [0-9.]+s' "$WORK/$results.log" | tail -n 1 | tr -d '=')"
}

# cheroot listens on ephemeral ports, CherryPy's suite on one port for all its classes (a
# free one, not its fixed 54583, which another job on this machine may be using): the two
# suites run side by side, one mode after the other.
CP_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for mode in stock template; do
    echo "== the suites on the $mode server"
    suite cheroot "$mode" "cheroot-$mode" &
    suite cherrypy "$mode" "cherrypy-$mode" &
    wait
done

echo "== passed on stock, not with the template server"
"$PY" "$CI/upstream/compare.py" candidates "$WORK" "$CI/upstream-allowlist.txt"
again() {  # suite: its candidates, on stock then on the template server
    local ids
    mapfile -t ids < "$WORK/$1-candidates.txt"
    [ ${#ids[@]} -gt 0 ] || return 0
    suite "$1" stock "$1-stock-again" "${ids[@]}"
    suite "$1" template "$1-template-again" "${ids[@]}"
}
again cheroot &
again cherrypy &
wait

"$PY" "$CI/upstream/compare.py" report "$WORK" "$CI/upstream-allowlist.txt"
