# Sourced by run.sh and profile.sh: installs what the benchmark needs, then raises the open-file limit.
# wrk is the load generator: a Debian package, installed once (needs root, as on CI).
if ! command -v wrk >/dev/null; then
  # Wait for another apt run rather than fail on its lock.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq wrk >/dev/null
fi

# perf counts the CPU instructions each server spends per request, a figure that hardly moves
# with other load on a shared machine (the "k instr/req" column). Optional: without it, or where
# the machine has no hardware counters, that column shows "–" and the rest runs as before.
if ! command -v perf >/dev/null; then
  { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq linux-perf >/dev/null; } 2>/dev/null ||
    echo "bench: could not install perf (apt-get install linux-perf); no instruction counts" >&2
fi

# The peers, py-spy and the template's own dependencies, pinned, in their own environment;
# reinstalled only when bench/requirements.txt or the project's requirements.txt change.
stamp=.venv/.installed-$(cat requirements.txt ../requirements.txt | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
  rm -f .venv/.installed-* && touch "$stamp"
fi

# 1,000 connections need more than the common 1,024 open files, for wrk and for each server.
[ "$(ulimit -n)" -ge 4096 ] || ulimit -n "$(ulimit -Hn)"
