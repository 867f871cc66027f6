#!/usr/bin/env bash
# The benchmark in one command: this template against the servers people would copy instead.
#
#   bench/run.sh                 # default: every server, 10/100/1000 connections, 3 rounds (~8 min)
#   bench/run.sh --smoke         # seconds: every server starts, serves the right bytes, takes 1 s of load
#   bench/run.sh --servers template,2017,waitress --conns 100 --duration 5 --rounds 5
#   bench/run.sh --help          # all options (paths, wrk threads and timeout, ports, --json, --strict)
#
# It installs what it needs (wrk from Debian's packages; the servers into bench/.venv from
# bench/requirements.txt), starts each server on 127.0.0.1 in turn, drives it with wrk, stops it,
# and prints one Markdown table on stdout (progress goes to stderr). Servers are stopped on exit,
# failure or Ctrl-C. Profile the template under load with bench/profile.sh.
set -euo pipefail
cd "$(dirname "$0")"

# wrk is the load generator: a Debian package, installed once (needs root, as on CI).
if ! command -v wrk >/dev/null; then
  # Wait for another apt run rather than fail on its lock.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk >/dev/null
fi

# The peers and the template's own dependencies, pinned, in their own environment; reinstalled
# only when bench/requirements.txt or the project's requirements.txt change.
stamp=.venv/.installed-$(cat requirements.txt ../requirements.txt | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  rm -f .venv/.installed-* && touch "$stamp"
fi

# 1,000 connections need more than the common 1,024 open files, for wrk and for each server.
[ "$(ulimit -n)" -ge 4096 ] || ulimit -n "$(ulimit -Hn)"

exec .venv/bin/python bench.py "$@"
