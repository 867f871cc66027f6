#!/usr/bin/env bash
# The benchmark in one command: this template against the servers people would copy instead.
#
#   bench/run.sh                 # every server, 10/100/1000 connections, 3 rounds of 3 s runs (~14 min)
#   bench/run.sh --smoke         # ~45 s: every server starts, serves the right bytes, takes 1 s of load
#   bench/run.sh --rounds 1      # the same in ~5 min, one sample per row
#   bench/run.sh --servers template,template-2w,2017,waitress --conns 100 --paths / --rounds 5
#   bench/run.sh --help          # all options (paths, wrk threads and timeout, ports, --json, --strict)
#
# It installs what it needs (wrk from Debian's packages; the servers into bench/.venv from
# bench/requirements.txt), starts each server on 127.0.0.1 in turn, drives it with wrk, stops it,
# and prints one Markdown table on stdout (progress goes to stderr). Servers are stopped on exit,
# failure or Ctrl-C. Profile the template under load with bench/profile.sh.
set -euo pipefail
cd "$(dirname "$0")"

. ./setup.sh
exec .venv/bin/python bench.py "$@"
