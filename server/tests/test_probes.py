"""Tests of readiness, liveness, the SIGTERM drain and the admin listener (server/probes.py):
delete this file with probes.py."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

import cherrypy
import mock

from server import probes, testing
from server.testing import HERE, free_ports, request, start_server, stop

THREADS = testing.SHARED_THREADS
PORT, ADMIN_PORT = testing.PORT, testing.ADMIN_PORT


class Slow:
    @cherrypy.expose
    def sleep(self, seconds='1'):
        time.sleep(float(seconds))
        return 'slept\n'


def setUpModule():
    testing.shared_site(mount={'/test': Slow()})


class AdminListenerTest(unittest.TestCase):

    def test_admin_listener_answers_the_same_probes(self):
        self.assertEqual(request('GET', '/healthcheck', port=ADMIN_PORT)[2], b'Yay<br />\n')
        self.assertEqual(request('GET', '/healthcheck/live', port=ADMIN_PORT)[0], 200)
        self.assertEqual(request('GET', '/', port=ADMIN_PORT)[0], 404)  # no site there

    def test_admin_probes_answer_head_no_store_and_405(self):
        for path in ('/healthcheck', '/healthcheck/', '/healthcheck?t=1', '/healthcheck/live'):
            status, headers, body = request('HEAD', path, port=ADMIN_PORT)
            self.assertEqual((status, body, headers['Cache-Control']), (200, b'', 'no-store'), path)
            self.assertEqual(request('GET', path, port=ADMIN_PORT)[1]['Cache-Control'], 'no-store')
        status, headers, _ = request('POST', '/healthcheck', port=ADMIN_PORT, body=b'x')
        self.assertEqual((status, headers['Allow']), (405, 'GET, HEAD'))

    def test_the_same_port_for_both_listeners_is_a_bad_setting(self):
        port = free_ports(1)[0]
        done = subprocess.run([sys.executable, 'run.py'], cwd=HERE, capture_output=True, text=True,
                              env=dict(os.environ, HOST='127.0.0.1', PORT=str(port),
                                       ADMIN_PORT=str(port)), timeout=20)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(done.stderr, f'Bad setting: ADMIN_PORT={port}: the same port as PORT; '
                                      'the admin listener needs a port of its own (0 turns it off)\n')

    def test_probes_answer_while_every_main_worker_is_busy(self):
        with concurrent.futures.ThreadPoolExecutor(THREADS * 2) as pool:
            slow = [pool.submit(request, 'GET', '/test/sleep?seconds=2', timeout=10)
                    for _ in range(THREADS * 2)]
            time.sleep(0.5)  # every main worker is now sleeping
            started = time.monotonic()
            status, _, body = request('GET', '/healthcheck', port=ADMIN_PORT, timeout=1)
            elapsed = time.monotonic() - started
            self.assertEqual((status, body), (200, b'Yay<br />\n'))
            self.assertLess(elapsed, 1.0)  # Kubernetes' default probe timeout
            self.assertTrue(all(f.result()[0] == 200 for f in slow))


class DrainTest(unittest.TestCase):

    def test_drain_keeps_serving_with_readiness_503_then_exits_0(self):
        proc, port, admin = start_server({'DRAIN_SECONDS': '2'})
        try:
            self.assertEqual(request('GET', '/healthcheck', port=admin)[0], 200)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            for probe_port in (port, admin):
                status, headers, body = request('GET', '/healthcheck', port=probe_port)
                self.assertEqual((status, body), (503, b'Not ready: draining\n'))
                self.assertEqual(headers['Cache-Control'], 'no-store')
            status, headers, _ = request('GET', '/', port=port)
            self.assertEqual(status, 200)  # still serving while balancers deregister us
            self.assertEqual(headers['Connection'], 'close')  # clients move elsewhere
            self.assertEqual(request('GET', '/healthcheck/live', port=admin)[0], 200)
            self.assertIsNone(proc.poll())
        finally:
            out, err = stop(proc)
        self.assertEqual(proc.returncode, 0, err)


# A readiness check that never returns, added as the README shows.
HANGING_CHECK = """
import threading, run
from server import probes
@probes.readiness_check('hangs', timeout=0.2)
def hangs():
    threading.Event().wait()
run.main()
"""


class StopTest(unittest.TestCase):
    """SIGTERM ends the server with status 0, whatever it is doing."""

    def test_a_hanging_readiness_check_does_not_hold_up_the_exit(self):
        proc, port, admin = start_server({'SHUTDOWN_TIMEOUT': '2'}, code=HANGING_CHECK,
                                         ready_status=503)
        deadline = time.monotonic() + 10  # 503 "starting" comes first
        while b'hangs' not in request('GET', '/healthcheck', port=port)[2]:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.1)
        for _ in range(3):  # each probe finds the check still running
            self.assertEqual(request('GET', '/healthcheck', port=admin)[2],
                             b"Not ready: check 'hangs' timed out\n")
            time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = stop(proc, timeout=10)
        self.assertEqual(proc.returncode, 0, err[-2000:])
        self.assertLess(time.monotonic() - started, 2 + 1)  # SHUTDOWN_TIMEOUT, and a margin

    def test_sigterm_at_any_moment_of_start_up_exits_0(self):
        for delay in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5):
            port, admin = free_ports(2)
            env = dict(os.environ, HOST='127.0.0.1', PORT=str(port),
                       ADMIN_PORT=str(admin))
            proc = subprocess.Popen([sys.executable, 'run.py'], cwd=HERE, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            testing.track(proc)
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            out, err = stop(proc, timeout=15)
            self.assertEqual(proc.returncode, 0, (delay, err[-1500:]))


class LifecycleTest(unittest.TestCase):
    """State transitions and readiness checks, on a fresh Lifecycle."""

    def setUp(self):
        self.lifecycle = probes.Lifecycle()
        patcher = mock.patch.object(probes, 'lifecycle', self.lifecycle)
        patcher.start()
        self.addCleanup(patcher.stop)

    def test_starting_ready_draining_stopped(self):
        self.assertEqual(probes.not_ready_reason(), 'starting')
        self.lifecycle.state = probes.READY
        self.assertIsNone(probes.not_ready_reason())
        handler = probes._on_signal(drain_seconds=30)
        listener = mock.Mock(draining=False)
        with mock.patch.object(cherrypy.engine, 'exit') as engine_exit, \
                mock.patch.object(probes, '_listeners', return_value=[listener]):
            handler()
            self.assertEqual(probes.not_ready_reason(), 'draining')
            self.assertTrue(listener.draining)  # answers now say "Connection: close"
            engine_exit.assert_not_called()  # still serving for the drain period
            handler()  # a second signal does not wait
            engine_exit.assert_called_once()
        self.lifecycle.state = probes.STOPPED
        self.assertEqual(probes.not_ready_reason(), 'stopped')

    def test_a_stop_signal_while_starting_waits_for_the_start(self):
        with mock.patch.object(cherrypy.engine, 'exit') as engine_exit:
            probes._on_signal(drain_seconds=0)()
        engine_exit.assert_not_called()  # exiting half-started would exit 70
        self.assertTrue(self.lifecycle.stop_requested)
        self.assertEqual(self.lifecycle.state, probes.STARTING)

    def test_zero_drain_stops_at_once(self):
        self.lifecycle.state = probes.READY
        with mock.patch.object(cherrypy.engine, 'exit') as engine_exit, \
                mock.patch.object(probes, '_listeners', return_value=[]):
            probes._on_signal(drain_seconds=0)()
            self.lifecycle.drain_timer.join(2)
            engine_exit.assert_called_once()

    def test_a_failing_check_makes_readiness_503_without_details(self):
        self.lifecycle.state = probes.READY

        @probes.readiness_check('database', timeout=0.5)
        def database():
            raise ConnectionError('password=hunter2 host=db.internal')

        self.assertEqual(probes.not_ready_reason(), "check 'database' failed")

    def test_a_check_returning_false_fails(self):
        self.lifecycle.state = probes.READY
        probes.readiness_check('cache')(lambda: False)
        self.assertEqual(probes.not_ready_reason(), "check 'cache' failed")

    def test_an_async_check_or_a_timeout_not_above_zero_is_refused_when_registered(self):
        """An async def check returned a coroutine, which is truthy: always ready."""
        async def database():
            return False
        with self.assertRaises(TypeError):
            probes.readiness_check('database')(database)
        for timeout in (0, -1, '1'):
            with self.assertRaises(ValueError):
                probes.readiness_check('database', timeout=timeout)
        self.assertNotIn('database', probes.lifecycle.checks)

    def test_a_change_of_readiness_is_logged_once_with_why(self):
        """A check that fails (False, an error, a timeout) is logged when readiness changes,
        with the details the 503 body leaves out; not once a probe."""
        self.lifecycle.state = probes.READY
        outcome = {'value': True}

        def database():
            if outcome['value'] == 'raise':
                raise ConnectionError('db.internal refused')
            if outcome['value'] == 'hang':
                time.sleep(0.3)
            return outcome['value']
        probes.readiness_check('database', timeout=0.1)(database)
        lines = []
        with mock.patch.object(cherrypy, 'log', lambda message, context='': lines.append(message)), \
                mock.patch.object(probes, 'CHECK_INTERVAL', 0):
            for value in (True, False, False, True, 'hang', 'hang', True, 'raise', 'raise'):
                outcome['value'] = value
                probes.not_ready_reason()
                time.sleep(0.4 if value == 'hang' else 0)  # the hung run ends before the next
        self.assertEqual(lines, [
            "Not ready: check 'database' failed: it returned False",
            'Ready again: every readiness check passes',
            "Not ready: check 'database' timed out (after 0.1 s)",
            'Ready again: every readiness check passes',
            "Not ready: check 'database' failed: ConnectionError('db.internal refused')"])

    def test_a_slow_check_times_out(self):
        self.lifecycle.state = probes.READY
        probes.readiness_check('slow', timeout=0.1)(lambda: time.sleep(1))
        started = time.monotonic()
        self.assertEqual(probes.not_ready_reason(), "check 'slow' timed out")
        self.assertLess(time.monotonic() - started, 0.9)

    def test_checks_run_at_most_once_a_second(self):
        self.lifecycle.state = probes.READY
        calls = []
        probes.readiness_check('counted')(lambda: calls.append(1))
        for _ in range(50):
            self.assertIsNone(probes.not_ready_reason())
        self.assertEqual(len(calls), 1)

    def test_a_stopped_main_listener_is_not_ready(self):
        self.lifecycle.state = probes.READY
        with mock.patch.object(cherrypy.server.httpserver, 'ready', False):
            self.assertEqual(probes.not_ready_reason(), 'main listener not serving')
        with mock.patch.object(cherrypy.server.httpserver, 'last_loop', time.monotonic() - 60):
            self.assertEqual(probes.not_ready_reason(), 'main listener stuck')

    def test_readiness_endpoint_reports_a_failing_check(self):
        with mock.patch.object(probes.lifecycle, 'state', probes.READY):
            probes.readiness_check('queue')(lambda: False)
            status, headers, body = request('GET', '/healthcheck', port=ADMIN_PORT)
        self.assertEqual((status, body), (503, b"Not ready: check 'queue' failed\n"))

    def test_a_hanging_check_holds_one_daemon_thread_not_one_per_probe(self):
        self.lifecycle.state = probes.READY
        release = threading.Event()
        self.addCleanup(release.set)
        probes.readiness_check('hangs', timeout=0.05)(release.wait)
        for _ in range(3):
            self.lifecycle._cached = (0.0, None)  # as if a second had passed
            self.assertEqual(probes.not_ready_reason(), "check 'hangs' timed out")
        threads = [t for t in threading.enumerate() if t.name == 'readiness hangs']
        self.assertEqual(len(threads), 1)
        self.assertTrue(threads[0].daemon)


if __name__ == '__main__':
    testing.main()
