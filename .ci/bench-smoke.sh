#!/usr/bin/env bash
# CI step: the benchmark must keep working. Every server starts, serves the right bytes and takes
# a second of load; no thresholds, since CI machines are too noisy for performance verdicts.
set -euo pipefail
cd "$(dirname "$0")/.."
bench/run.sh --smoke
