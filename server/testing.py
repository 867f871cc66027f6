"""Helpers for the tests of the site (test.py) and of the server (server/tests/).

    from server.testing import start_site, request, raw

start_site() runs the site of run.py in this process on two free loopback ports; request()
and raw() then talk to it over real sockets. start_server() runs `python run.py` as a user
would, in a subprocess, and stop() makes sure it ends.
"""
import atexit
import ctypes
import logging
import http.client
import signal
import os
import socket
import subprocess
import sys
import threading
import time

import cherrypy
import mock

import server

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project folder

# A test run stopped by SIGTERM (a CI time limit) must not exit 0 as the server does.
if signal.getsignal(signal.SIGTERM) is server._exit_before_serving:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

PORT = ADMIN_PORT = None  # set by start_site()


def _clear_setting_variables():
    """The tests check the site as prod.conf configures it: a setting in the environment
    (`DEV=1 ./run.sh`, `STATIC_MAX_AGE=60 ./run.sh`) is for the server run.sh starts after
    them, not for them (DEV=1 failed the error-page tests, and the server never started)."""
    from server import settings
    for name in settings.variable_names(os.path.join(HERE, 'prod.conf')):
        os.environ.pop(name, None)


_clear_setting_variables()


def free_ports(count=2):
    """Ports nothing listens on, all different: held open together, then released (two
    separate bind-to-0 calls can return the same port, and a server then fails to start)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port():
    return free_ports(1)[0]


PORT, ADMIN_PORT = free_ports(2)


def start_site(threads=8, mount=None, ports=None):
    """Configure run.py's site on `ports` (main, admin; default: free ones) and start it in
    this process; returns the ports.

    mount: {'/name': object} of test-only handlers, mounted under the site's root.
    threads is small, so that "every worker busy" is cheap to arrange.
    """
    global PORT, ADMIN_PORT
    import run  # the user's module, imported when a test needs it
    PORT, ADMIN_PORT = ports or free_ports(2)
    env = {'HOST': '127.0.0.1', 'PORT': str(PORT), 'ADMIN_PORT': str(ADMIN_PORT),
           'THREAD_POOL': str(threads)}
    with mock.patch.dict(os.environ, env):
        run.configure()
    root = cherrypy.tree.apps[''].root
    for name, handler in (mount or {}).items():
        setattr(root, name.strip('/'), handler)
    cherrypy.log.screen = False  # keep the test output readable
    cherrypy.engine.start()
    cherrypy.engine.wait(cherrypy.engine.states.STARTED)
    return PORT, ADMIN_PORT


def stop_site():
    cherrypy.engine.exit()


SHARED_THREADS = 8
_shared = []


def shared_site(threads=SHARED_THREADS, mount=None):
    """One site per test process on PORT and ADMIN_PORT, however many test modules ask for
    it (CherryPy's engine starts once per process); each caller may mount its handlers."""
    if not _shared:
        _shared.append(start_site(threads, ports=(PORT, ADMIN_PORT)))
        # Stop it once the main thread is done: Python waits for the server's threads
        # before it runs atexit, so atexit would wait forever.
        threading.Thread(target=lambda: (threading.main_thread().join(), stop_site()),
                         daemon=True).start()
    root = cherrypy.tree.apps[''].root
    for name, handler in (mount or {}).items():
        setattr(root, name.strip('/'), handler)
    return _shared[0]


def request(method, path, port=None, headers=None, body=None, timeout=5):
    """One request on a new connection; returns (status, headers, body)."""
    conn = http.client.HTTPConnection('127.0.0.1', port or PORT, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def raw(data, port=None, timeout=5):
    """Send bytes as they are (no client-side URL clean-up); returns the raw answer."""
    with socket.create_connection(('127.0.0.1', port or PORT), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b'\r\n\r\n' in b''.join(chunks) and b'Connection: close' not in b''.join(chunks):
                break
        return b''.join(chunks)


def flush_access_log():
    """Access lines are written in batches by a background thread: write what is queued."""
    cherrypy.tree.apps[''].log.flush()


class CaptureLog(logging.Handler):
    """Collects the lines written to one of CherryPy's loggers while a test runs."""

    def __init__(self, logger_name):
        super().__init__()
        self.lines = []
        self.logger = logging.getLogger(logger_name)

    def emit(self, record):
        # The access log writes a batch of lines as one record; a traceback spans lines too.
        self.lines.extend(self.format(record).splitlines())

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)


_started = []  # every server subprocess started here: none outlives the tests


@atexit.register
def kill_leftovers():
    """A test that failed before stop() leaves its server running: end it here."""
    for proc in _started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _die_with_parent():
    """In the child: Linux kills it when the test process dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: kill_leftovers() still runs at a normal exit


def track(proc):
    """Kill this subprocess at the latest when the tests end."""
    _started.append(proc)
    return proc


def start_server(extra_env=None, code=None, cwd=HERE, ready_status=200):
    """Start `python run.py` (or `python -c code`) on free ports; wait until /healthcheck
    answers `ready_status`."""
    port, admin = free_ports(2)
    env = dict(os.environ, HOST='127.0.0.1', PORT=str(port), ADMIN_PORT=str(admin),
               **(extra_env or {}))
    args = [sys.executable, '-c', code] if code else [sys.executable, os.path.join(cwd, 'run.py')]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    track(proc)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:  # ready: 200 once every listener is up and the engine started
            if request('GET', '/healthcheck', port=port, timeout=1)[0] == ready_status:
                return proc, port, admin
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError('server did not start: ' + proc.communicate()[1][-2000:])


def stop(proc, timeout=20):
    """Wait for a server subprocess to exit; kill it if it does not, so no test leaks one."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C) while waiting
            proc.kill()


def main():
    """Run the calling test module's tests; print the closing line CI reads."""
    import unittest
    result = unittest.main(module='__main__', exit=False).result
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print(f'{passed} passed, {failed} failed, {len(result.skipped)} skipped')
    finish()
    sys.exit(1 if failed or not result.testsRun else 0)


def finish():
    """Stop the shared site now, from the main thread: stopped only as the process exits,
    CherryPy warned "The main thread is exiting, but the Bus is in the STOPPING state"."""
    if _shared:
        stop_site()
