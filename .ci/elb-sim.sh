#!/usr/bin/env bash
# Load-balancer simulation (issue 4): probes must answer while every worker is busy.
# Bounded: about 35 s (the simulation stops itself at 80 s). Prints Markdown tables and "N passed, N failed"; non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# The project's Python: .venv (made by testing.sh when the pins are not installed), else python3.
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python

# 500 idle + 350 busy connections, counted on both ends in one machine: more than the usual 1024.
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"

exec "$python" .ci/elb_sim.py "$@"
