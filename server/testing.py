"""Helpers for the tests of the site (test.py) and of the server (server/tests/).

    from server.testing import start_site, request, raw

start_site() runs the site of run.py in this process on two free loopback ports; request()
and raw() then talk to it over real sockets. start_server() runs `python run.py` as a user
would, in a subprocess, and stop() makes sure it ends.
"""
import logging
import http.client
import os
import socket
import subprocess
import sys
import time

import cherrypy
import mock

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project folder
PORT = ADMIN_PORT = None  # set by start_site()


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


def start_server(extra_env=None, code=None, cwd=HERE):
    """Start `python run.py` (or `python -c code`) on free ports; wait until it answers."""
    port, admin = free_ports(2)
    env = dict(os.environ, HOST='127.0.0.1', PORT=str(port), ADMIN_PORT=str(admin),
               **(extra_env or {}))
    args = [sys.executable, '-c', code] if code else [sys.executable, os.path.join(cwd, 'run.py')]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:  # ready: every listener up and the engine started
            if request('GET', '/healthcheck', port=admin, timeout=1)[0] == 200:
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


def main():
    """Run the calling test module's tests; print the closing line CI reads."""
    import unittest
    result = unittest.main(module='__main__', exit=False).result
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print(f'{passed} passed, {failed} failed, {len(result.skipped)} skipped')
    sys.exit(1 if failed or not result.testsRun else 0)
