#!/usr/bin/env bash
# Browser test of /dashboard (dashboard.py): Debian's headless Chromium driven by Selenium.
# Prints "N passed, N failed"; the screenshot goes to artifacts/dashboard.png (path printed).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's browser and its matching driver; never a downloaded browser build.
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "dashboard-browser: installing Debian's chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The server's pinned requirements plus Selenium, in a venv of its own (git-ignored: .venv/).
# Selenium 4.51.0: the newest whose pinned certifi the package index serves here.
venv=.ci/.venv
python=${PYTHON:-python3}
command -v "$python" >/dev/null || python=python
if ! "$venv/bin/python" -c 'import selenium, cherrypy, prometheus_client' 2>/dev/null; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r requirements.txt selenium==4.51.0
fi

# Selenium Manager must not look for drivers online: the script names /usr/bin/chromedriver.
SE_OFFLINE=true timeout 300 "$venv/bin/python" .ci/dashboard_browser.py
