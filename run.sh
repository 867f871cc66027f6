#!/usr/bin/env bash
# Build the image, run the site's tests inside it, then run it:   ./run.sh   (./run.sh bash gives a shell)
# Without a reachable container engine it runs locally instead: .venv, the same tests, python run.py.
# The tests here are ./testing.sh --site (test.py, seconds); CI runs the full ./testing.sh.
set -euo pipefail
# Settings (environment variables):
ENGINE=${ENGINE:-docker}                      # docker or podman: same command line
IMAGE=${IMAGE:-cherrypy-template}             # name of the image it builds
CONTAINER=${CONTAINER:-cherrypy-template}     # name of the container; the previous one is replaced
HOST_PORT=${HOST_PORT:-80}                    # port on this machine (the original template served on 80)
HOST_BIND=${HOST_BIND:-}                      # e.g. 127.0.0.1 to publish on loopback only (tests, laptops)
PYTHON_IMAGE=${PYTHON_IMAGE:-}                # base image; empty = the Dockerfile's python:3.12-slim
cd "$(dirname "$0")"                          # works from any folder

if ! "$ENGINE" info >/dev/null 2>&1; then     # no engine installed, not running, or not allowed
  echo "run.sh: no reachable container engine ('$ENGINE info' failed); running locally on port ${PORT:-8080}" >&2
  [ -x .venv/bin/python ] || python3 -m venv .venv   # the pinned dependencies, kept out of the system Python
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt  # no-op when in step
  export PATH="$PWD/.venv/bin:$PATH"          # "python" below and in testing.sh is the venv's
  ./testing.sh --site || { echo "run.sh: tests failed; not starting the server" >&2; exit 1; }
  if [ $# -eq 0 ]; then set -- python run.py; fi
  exec "$@"                                   # the server (or your command) replaces this script
fi

# Quietly remove the previous container of this name, running or not (as the original did).
"$ENGINE" rm --force "$CONTAINER" >/dev/null 2>&1 || true

build=(--tag "$IMAGE")
if [ -n "$PYTHON_IMAGE" ]; then build+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"); fi
# Podman's default OCI image format drops HEALTHCHECK; the Docker format keeps it.
if [ "$(basename "$ENGINE")" = podman ]; then build+=(--format docker); fi
"$ENGINE" build "${build[@]}" .

# The image tests itself, as the user and with the files it will run with; no tests, no server.
if ! "$ENGINE" run --rm "$IMAGE" ./testing.sh --site; then
  echo "run.sh: tests failed inside image $IMAGE; not starting the container" >&2
  exit 1
fi
echo "run.sh: tests passed inside image $IMAGE; starting container $CONTAINER on port $HOST_PORT" >&2

# Your settings go with it (LOG_FORMAT=json ./run.sh), but PORT and HOST: the container
# listens on 8080, published as HOST_BIND:HOST_PORT.
settings=()
for name in $("$ENGINE" run --rm "$IMAGE" python -m server.settings); do
  if [ "$name" != PORT ] && [ "$name" != HOST ] && [ -n "${!name+set}" ]; then settings+=(--env "$name"); fi
done

tty=()
if [ -t 0 ]; then tty=(-it); fi               # a terminal for ./run.sh bash; none in CI or pipes
exec "$ENGINE" run "${tty[@]}" "${settings[@]}" --name "$CONTAINER" \
  --publish "${HOST_BIND:+$HOST_BIND:}$HOST_PORT:8080" "$IMAGE" "$@"
