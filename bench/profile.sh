#!/usr/bin/env bash
# Where the template spends its time under load: py-spy samples it while wrk holds 100 connections.
#
#   bench/profile.sh                          # the template, 100 connections on /, 10 s of samples
#   bench/profile.sh --all-threads            # every thread, also those waiting (default: GIL holder)
#   bench/profile.sh --servers 2017 --paths /logo.png --conns 1000 --duration 20 --top 30
#
# Prints the top functions by own time and by total time as two Markdown tables.
set -euo pipefail
cd "$(dirname "$0")"

. ./setup.sh
exec .venv/bin/python bench.py --profile --servers template --conns 100 --paths / --duration 10 "$@"
