"""Tests of the server machinery (server/): a real server on free loopback ports.

    python -m unittest discover -s server/tests -t .     # from the project folder
    ./testing.sh                                          # with the site's tests, under coverage

Most tests share one server started in this process (setUpModule). Tests of start-up,
bad settings and signals run `python run.py` as a subprocess, as a user would.
"""
import collections
import concurrent.futures
import http.client
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import cheroot.makefile
import cherrypy
import mock

from server import probes, production, settings, testing
from server.testing import (HERE, CaptureLog, flush_access_log, free_port, free_ports,
                            request, start_server, stop)

THREADS = 8  # small, so that "every worker busy" is cheap to arrange


class Slow:
    """Test-only handlers mounted on the shared server."""

    @cherrypy.expose
    def sleep(self, seconds='1'):
        time.sleep(float(seconds))
        return 'slept\n'

    @cherrypy.expose
    @cherrypy.config(**{'response.stream': True})
    def stream(self):
        def pieces():
            yield 'first\n'
            time.sleep(1)
            yield 'second\n'
        return pieces()

    @cherrypy.expose
    def framed(self):  # a page that may be framed by its own site
        cherrypy.response.headers['X-Frame-Options'] = 'SAMEORIGIN'
        return 'framed\n'

    @cherrypy.expose
    def echo(self, *segments):  # the URL's path after /test/echo/, as the handler sees it
        return '/'.join(segments)

    @cherrypy.expose
    def config_keys(self):
        return ' '.join(sorted(cherrypy.request.config))

    @cherrypy.expose
    def boom(self):
        raise RuntimeError('secret detail /etc/app/config.py')

    @cherrypy.expose
    def redirect(self):
        raise cherrypy.InternalRedirect('/test/echo/redirected')

    @cherrypy.expose
    @cherrypy.config(**{'response.stream': True})
    def broken_stream(self):
        def pieces():
            yield 'first\n'
            raise RuntimeError('half-way')
        return pieces()

    @cherrypy.expose
    @cherrypy.config(**{'response.stream': True})
    def too_long(self):
        cherrypy.response.headers['Content-Length'] = '3'
        return iter([b'more than three'])


def grafted(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'grafted ' + environ['PATH_INFO'].encode()]



PORT, ADMIN_PORT = free_ports(2)


def setUpModule():
    testing.start_site(THREADS, mount={'/test': Slow()}, ports=(PORT, ADMIN_PORT))
    cherrypy.tree.graft(grafted, '/grafted')


def tearDownModule():
    testing.stop_site()


class AccessLogTest(unittest.TestCase):

    def test_one_line_per_request_but_not_for_probes(self):
        with CaptureLog('cherrypy.access') as log:
            request('GET', '/', headers={'User-Agent': 'tester "quoted"'})
            request('GET', '/healthcheck')
            request('GET', '/healthcheck/live')
            flush_access_log()
        self.assertEqual(len(log.lines), 1, log.lines)
        self.assertRegex(log.lines[0], r'^127\.0\.0\.1 - - \[.+\] "GET / HTTP/1.1" 200 \d+ "" '
                                       r'"tester \\"quoted\\""$')

    def test_what_the_client_sent_is_escaped_in_the_line(self):
        # (Control characters do not get this far: the server answers them 400.)
        odd = {'User-Agent': 'back\\slash \t caf\xe9', 'Referer': 'https://example.com/?q="x"\t1'}
        with CaptureLog('cherrypy.access') as log:
            request('GET', '/', headers=odd)
            flush_access_log()
        self.assertTrue(log.lines[0].endswith(
            ' "https://example.com/?q=\\"x\\"\\t1" "back\\\\slash \\t caf\\xe9"'), log.lines)

    def test_quote_takes_its_shortcut_only_when_nothing_needs_escaping(self):
        def slow(text):
            return text.encode('unicode_escape').decode('ascii').replace('"', '\\"')
        for text in ('GET / HTTP/1.1', 'Mozilla/5.0 (X11)', '', 'a"b', 'a\\b', 'tab\there',
                     'new\nline', 'caf\xe9', '\u2713', '\x7f', ' '):
            self.assertEqual(production._quote(text), slow(text), repr(text))

    def test_lines_reach_the_log_without_a_flush(self):
        """The writer thread logs what came in every BATCH_SECONDS, one line per request."""
        with CaptureLog('cherrypy.access') as log:
            for _ in range(3):
                request('GET', '/')
            deadline = time.monotonic() + 5
            while len(log.lines) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
        self.assertEqual(len(log.lines), 3, log.lines)

    def test_probe_logging_can_be_turned_on(self):
        app = cherrypy.tree.apps['']
        with mock.patch.object(app.log, 'log_health_checks', True), \
                CaptureLog('cherrypy.access') as log:
            request('GET', '/healthcheck')
            flush_access_log()
        self.assertEqual(len(log.lines), 1)

    def test_trust_proxy_takes_the_address_the_balancer_appended(self):
        spoofed = {'X-Forwarded-For': '6.6.6.6, 10.1.2.3', 'X-Forwarded-Proto': 'https'}
        with CaptureLog('cherrypy.access') as log:
            request('GET', '/', headers=spoofed)  # TRUST_PROXY off: headers ignored
            config = cherrypy.tree.apps[''].config['/']
            with mock.patch.dict(config, {'tools.trusted_proxy.on': True}):
                request('GET', '/', headers=spoofed)
                request('GET', '/', headers={'X-Forwarded-For': '10.9.9.9'})
            flush_access_log()
        self.assertTrue(log.lines[0].startswith('127.0.0.1 '), log.lines)
        self.assertTrue(log.lines[1].startswith('10.1.2.3 '), log.lines)
        self.assertTrue(log.lines[2].startswith('10.9.9.9 '), log.lines)
        self.assertNotIn('6.6.6.6', ''.join(log.lines))


class KeepAliveTest(unittest.TestCase):

    def test_more_than_ten_clients_keep_their_connections(self):
        conns = [http.client.HTTPConnection('127.0.0.1', PORT, timeout=5) for _ in range(30)]
        try:
            for conn in conns:
                conn.request('GET', '/healthcheck')
                response = conn.getresponse()
                response.read()
                self.assertNotEqual(response.headers['Connection'], 'close')
            for conn in conns:  # the same sockets answer again
                sock = conn.sock
                conn.request('GET', '/healthcheck')
                self.assertEqual(conn.getresponse().read(), b'Yay<br />\n')
                self.assertIs(conn.sock, sock)
        finally:
            for conn in conns:
                conn.close()


def serve_in_thread(app, timeout=10, threads=2, expiration_interval=0.5):
    """A production.AdminServer on a free loopback port, serving from a thread; stop() it.
    expiration_interval: the selector thread's longest sleep (cheroot's, 0.5 s)."""
    server = production.AdminServer(('127.0.0.1', 0), app, numthreads=threads, request_queue_size=64)
    server.tune(keep_alive_timeout=60, keep_alive_limit=100)
    server.timeout = timeout  # server.socket_timeout
    server.expiration_interval = expiration_interval
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    return server


class RequestReaderTest(unittest.TestCase):
    """production._RequestReader: what cheroot's parser reads, from memory."""

    def test_readline_and_read_give_what_cheroots_reader_gives(self):
        """Same bytes, same calls, same answers as cheroot's socket reader."""
        data = (b'GET / HTTP/1.1\r\nHost: x\r\n\r\n' + b'A' * 300 + b'\r\n' + b'B' * 20000 + b'\n'
                + b'\n' * 3 + b'tail without newline')
        sizes = [256, -1, None, 0, 1, 5, 256, 256, 10000, -1, 256, None, 3, -1, -1, -1, 256, -1]
        results = []
        for make in (lambda sock: cheroot.makefile.StreamReader(sock, 'rb'),
                     lambda sock: production._RequestReader(data)):
            ours, theirs = socket.socketpair()
            with ours, theirs:
                theirs.sendall(data)
                theirs.shutdown(socket.SHUT_WR)
                reader = make(ours)
                lines = [reader.readline(size) for size in sizes[:2]]
                results.append((lines, reader.read(5), reader.read(), reader.bytes_read))
        self.assertEqual(results[0], results[1])
        reader = production._RequestReader(data)
        lines = [reader.readline(size) for size in sizes]
        self.assertEqual(b''.join(lines) + reader.read(), data)
        self.assertEqual((reader.read(), reader.readline(), reader.bytes_read), (b'', b'', len(data)))

    def _serve_echo(self):
        """A server answering with the request's path and its X-Echo header."""
        def app(environ, start_response):
            body = ('%s %s' % (environ['PATH_INFO'], environ.get('HTTP_X_ECHO', ''))).encode()
            start_response('200 OK', [('Content-Length', str(len(body)))])
            return [body]
        server = serve_in_thread(app)
        self.addCleanup(server.stop)
        return server

    @staticmethod
    def _read_answers(client, count):
        """`count` answers from one connection: their bodies, in order."""
        client.settimeout(5)
        stream, bodies = client.makefile('rb'), []
        for _ in range(count):
            status = stream.readline()
            assert status.startswith(b'HTTP/1.1 200 '), status
            headers = http.client.parse_headers(stream)
            bodies.append(stream.read(int(headers['Content-Length'])))
        return bodies

    def test_pipelined_requests_sent_at_once_are_all_answered_in_order(self):
        server = self._serve_echo()
        with socket.create_connection(server.bind_addr) as client:
            client.sendall(b''.join(b'GET /%d HTTP/1.1\r\nHost: x\r\nX-Echo: e%d\r\n\r\n' % (i, i)
                                    for i in range(3)))
            self.assertEqual(self._read_answers(client, 3), [b'/0 e0', b'/1 e1', b'/2 e2'])

    def test_a_request_sent_a_few_bytes_at_a_time_is_read_whole(self):
        server = self._serve_echo()
        request_bytes = b'GET /slow HTTP/1.1\r\nHost: x\r\nX-Echo: ' + b'v' * 600 + b'\r\n\r\n'
        with socket.create_connection(server.bind_addr) as client:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(0, len(request_bytes), 7):
                client.sendall(request_bytes[i:i + 7])
                time.sleep(0.001)
            self.assertEqual(self._read_answers(client, 1), [b'/slow ' + b'v' * 600])

    def test_a_header_too_large_still_gets_an_error(self):
        server = self._serve_echo()
        server.max_request_header_size = 4096
        with socket.create_connection(server.bind_addr) as client:
            client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nX-Echo: ' + b'v' * 8000 + b'\r\n\r\n')
            client.settimeout(5)
            self.assertRegex(client.recv(100), rb'^HTTP/1\.1 4(13|31) ')


class OneSendTest(unittest.TestCase):

    def test_a_small_answer_leaves_in_one_send(self):
        """Status line, headers and body go out in one system call, not two."""
        sent, sendall = [], socket.socket.sendall

        def counted(sock, data, *args):
            if sock.getsockname()[1] == PORT:  # the server's side of the connection
                sent.append(bytes(data))
            return sendall(sock, data, *args)

        with mock.patch.object(socket.socket, 'sendall', counted):
            status, _, body = request('GET', '/')
        self.assertEqual(status, 200)
        self.assertEqual(len(sent), 1, sent)
        self.assertTrue(sent[0].startswith(b'HTTP/1.1 200 OK\r\n'))
        self.assertTrue(sent[0].endswith(body))

    def test_a_client_that_stops_reading_holds_a_worker_for_one_timeout(self):
        """A send that times out is not retried: the worker is free after one
        server.socket_timeout, not two."""
        big = b'x' * (64 << 20)

        def app(environ, start_response):
            start_response('200 OK', [('Content-Length', str(len(big)))])
            return [big]

        durations = []
        communicate = production.TunedConnection.communicate

        def timed(conn):
            started = time.monotonic()
            try:
                return communicate(conn)
            finally:
                durations.append(time.monotonic() - started)

        with mock.patch.object(production.TunedConnection, 'communicate', timed):
            server = serve_in_thread(app, timeout=1)
            try:
                with socket.create_connection(server.bind_addr) as client:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')  # and never reads
                    deadline = time.monotonic() + 10
                    while not durations and time.monotonic() < deadline:
                        time.sleep(0.1)
            finally:
                server.stop()
        self.assertTrue(durations)
        self.assertLess(durations[0], 1.8)  # 1 s timeout; the answer's rest was retried: 2.2 s

    def test_a_failed_send_closes_the_connection(self):
        """A client pipelines HEAD requests and never reads: once a send times out, the
        connection is closed, not kept for the next answer."""
        def app(environ, start_response):
            start_response('200 OK', [('Content-Length', '100000'), ('X-Pad', 'p' * 2000)])
            return []

        server = serve_in_thread(app, timeout=0.5)
        try:
            with socket.create_connection(server.bind_addr) as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
                client.settimeout(0.2)
                closed, deadline = False, time.monotonic() + 8
                while not closed and time.monotonic() < deadline:
                    try:
                        client.send(b'HEAD / HTTP/1.1\r\nHost: x\r\n\r\n' * 50)
                    except (socket.timeout, BlockingIOError):
                        pass
                    except OSError:  # reset or broken pipe: the server closed it
                        closed = True
                    time.sleep(0.05)
        finally:
            server.stop()
        self.assertTrue(closed, 'the connection was still open after 8 s')

    def test_a_streamed_answer_is_not_held_back(self):
        """Only the headers wait for the body: the first piece of a stream arrives before
        the handler has made the second."""
        with socket.create_connection(('127.0.0.1', PORT), timeout=5) as sock:
            sock.sendall(b'GET /test/stream HTTP/1.1\r\nHost: x\r\n\r\n')
            started, received = time.monotonic(), b''
            while b'first' not in received:
                received += sock.recv(4096)
            self.assertLess(time.monotonic() - started, 0.8)  # the second piece comes at 1 s
            self.assertNotIn(b'second', received)


class StockBehaviourTest(unittest.TestCase):
    """What stock CherryPy does, which the native gateway used to break."""

    def test_internal_redirect(self):
        self.assertEqual(request('GET', '/test/redirect')[::2], (200, b'redirected'))

    def test_a_grafted_wsgi_app(self):
        self.assertEqual(request('GET', '/grafted/x')[::2], (200, b'grafted /x'))

    def test_a_stream_that_fails_half_way_does_not_look_complete(self):
        answer = testing.raw(b'GET /test/broken_stream HTTP/1.1\r\nHost: x\r\n\r\n')
        self.assertIn(b'first', answer)
        self.assertNotIn(b'\r\n0\r\n\r\n', answer)  # no terminating chunk: truncated

    def test_a_body_longer_than_its_content_length_closes_the_connection(self):
        with socket.create_connection(('127.0.0.1', PORT), timeout=1) as sock:
            sock.sendall(b'GET /test/too_long HTTP/1.1\r\nHost: x\r\n\r\n'
                         b'GET /test/echo/next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            answer = b''
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except socket.timeout:
                pass
        # As stock cheroot: a 500, and the connection closes (the next request is not read
        # after a body of unknown length).
        self.assertTrue(answer.startswith(b'HTTP/1.1 500 '), answer)
        self.assertNotIn(b'next', answer)

    def test_no_version_in_any_answer(self):
        for data in (b'GET / HTTP/1.1\r\n\r\n', b'GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n',
                     b'GET /test/boom HTTP/1.1\r\nHost: x\r\n\r\n', b'GET / HTTP/9.9\r\n\r\n'):
            answer = testing.raw(data)
            self.assertNotIn(b'CherryPy/', answer)
            self.assertNotIn(b'Traceback', answer)


class ShutdownTest(unittest.TestCase):

    def test_requests_queued_before_the_stop_are_answered(self):
        """Connections the kernel accepted, and requests parked in the selector, when the
        stop comes: cheroot alone would close them unanswered."""
        def app(environ, start_response):
            start_response('200 OK', [('Content-Type', 'text/plain')])
            return [b'answered']

        server = production.AdminServer(('127.0.0.1', 0), app, numthreads=2, request_queue_size=64)
        server.tune(keep_alive_timeout=60, keep_alive_limit=100)
        server.prepare()  # listening, but its selector loop is not running yet
        port = server.bind_addr[1]
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            calls = [pool.submit(request, 'GET', '/', port=port) for _ in range(10)]
            time.sleep(0.3)  # all ten sent and waiting in the kernel's queue
            server.stop()
            results = [f.result() for f in calls]
        self.assertEqual([(s, b) for s, _, b in results], [(200, b'answered')] * 10)


    def test_a_connection_handed_back_after_the_selector_closed_is_closed(self):
        """A worker that finishes an answer while stop() closes the selector closes the
        connection; registering it raised and killed the worker, so queued requests behind
        it went unanswered."""
        server = production.AdminServer(('127.0.0.1', 0), lambda environ, start: [], numthreads=1)
        server.prepare()
        server.ready = True
        ours, theirs = socket.socketpair()
        try:
            conn = production.TunedConnection(server, ours)
            server._connections.close()
            server._connections.put(conn)  # what HTTPServer.put_conn does after an answer
            self.assertEqual(ours.fileno(), -1)
        finally:
            theirs.close()
            server.stop()

    def test_the_selector_thread_waits_while_the_stop_serves_what_arrived(self):
        """cheroot's serve() loop calls the selector's run() again as soon as it returns;
        while stop() serves the last requests that must not turn into a busy loop."""
        def app(environ, start_response):
            time.sleep(0.3)
            start_response('200 OK', [('Content-Length', '2')])
            return [b'ok']

        server = serve_in_thread(app, threads=4)
        runs = []
        run = production.IdleConnections.run
        with mock.patch.object(production.IdleConnections, 'run',
                               lambda manager, interval: runs.append(1) or run(manager, interval)):
            with socket.create_connection(server.bind_addr, timeout=5) as client:
                client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
                time.sleep(0.1)  # the request is on a worker, sleeping
                runs.clear()
                server.stop()
                self.assertTrue(client.recv(100).startswith(b'HTTP/1.1 200 OK'))
        self.assertLess(len(runs), 50)  # spinning, it was over 10,000


class FairnessTest(unittest.TestCase):

    def test_a_new_client_is_served_while_every_worker_has_a_busy_client(self):
        """Every worker busy with a keep-alive client that keeps sending: a new client is
        still answered within a second (no client may hold a worker for good)."""
        stop_sending = threading.Event()

        def keep_sending():
            conn = http.client.HTTPConnection('127.0.0.1', PORT, timeout=5)
            while not stop_sending.is_set():
                conn.request('GET', '/healthcheck')
                conn.getresponse().read()
            conn.close()

        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            senders = [pool.submit(keep_sending) for _ in range(THREADS)]
            try:
                time.sleep(0.3)  # every worker now holds one sending client
                self.assertEqual(request('GET', '/', timeout=2)[0], 200)
            finally:
                stop_sending.set()
            for sender in senders:
                sender.result()

    def test_one_selector_round_accepts_every_queued_connection(self):
        """A burst of new connections is accepted at once, not one per selector round: under
        load each round waits for the GIL, and one by one took 1.7 s for 100 connections."""
        server = production.AdminServer(('127.0.0.1', 0), lambda environ, start: [], numthreads=1)
        server.request_queue_size = 64  # the listen backlog
        server.prepare()
        server.ready = True  # as serve() would: stop() then ends the worker too
        clients = [socket.create_connection(server.bind_addr, timeout=5) for _ in range(20)]
        try:
            server._connections._from_server_socket(server.socket)
            self.assertEqual(server._connections._num_connections, 20)
        finally:
            for client in clients:
                client.close()
            server.stop()

    def test_slow_handlers_still_run_side_by_side(self):
        """Requests go to few threads at a time, but handlers that block (here, sleep) bring
        in more threads: every worker sleeps at once, as with cheroot's own queue."""
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            answers = list(pool.map(lambda _: request('GET', '/test/sleep?seconds=0.5')[0],
                                    range(THREADS)))
        self.assertEqual(answers, [200] * THREADS)
        self.assertLess(time.monotonic() - started, 2.0)  # one at a time: 4 s

    def test_a_client_that_pauses_keeps_its_connection(self):
        conn = http.client.HTTPConnection('127.0.0.1', PORT, timeout=5)
        try:
            conn.request('GET', '/healthcheck')
            conn.getresponse().read()
            sock = conn.sock
            time.sleep(0.6)  # longer than a selector round (0.5 s)
            conn.request('GET', '/healthcheck')
            self.assertEqual(conn.getresponse().read(), b'Yay<br />\n')
            self.assertIs(conn.sock, sock)
        finally:
            conn.close()


class LookBetweenRequestsTest(unittest.TestCase):
    """Under load the workers take ready connections themselves between requests
    (IdleConnections.look_between_requests); the selector thread looks only when a
    request it handed out could start at once."""

    @staticmethod
    def compute_app(environ, start_response):
        """/compute?S keeps the interpreter busy S seconds, as CPU-bound work does."""
        if environ['PATH_INFO'] == '/compute':
            end = time.monotonic() + float(environ['QUERY_STRING'])
            while time.monotonic() < end:
                pass
        start_response('200 OK', [('Content-Length', '2')])
        return [b'ok']

    def load(self, server, clients=20, requests=20):
        """`clients` keep-alive clients send `requests` each at once; returns how many
        connections were handed out by workers (True) and by the selector thread (False)."""
        handed_out_by = collections.Counter()
        process_conn = server.process_conn

        def counting(conn):
            handed_out_by[threading.current_thread().name.startswith('CP Server Thread')] += 1
            process_conn(conn)

        def client():
            conn = http.client.HTTPConnection(*server.bind_addr, timeout=10)
            answers = []
            for _ in range(requests):
                conn.request('GET', '/compute?0.001')
                answers.append(conn.getresponse().read())
            conn.close()
            return answers

        with mock.patch.object(server, 'process_conn', counting):
            with concurrent.futures.ThreadPoolExecutor(clients) as pool:
                results = [f.result() for f in [pool.submit(client) for _ in range(clients)]]
        self.assertEqual(results, [[b'ok'] * requests] * clients)
        return handed_out_by

    def test_under_load_the_workers_hand_out_ready_connections(self):
        server = serve_in_thread(self.compute_app, threads=4)
        self.addCleanup(server.stop)
        handed_out_by = self.load(server)
        # The selector thread hands out when the workers run dry; here they seldom do.
        # Without the workers' look, every one of the 400 comes from the selector thread.
        self.assertGreater(handed_out_by[True], handed_out_by[False], handed_out_by)

    def test_with_cheroots_own_queue_the_selector_thread_hands_out_alone(self):
        """What is left when PacedQueue is removed (README, "Remove what you do not need"):
        cheroot's queue and cheroot's selector loop, which hands out every connection."""
        with mock.patch.object(production, 'PacedQueue', lambda threads, maxsize=0: queue.Queue()):
            server = serve_in_thread(self.compute_app, threads=4)
        self.addCleanup(server.stop)
        self.assertIsInstance(server.requests._queue, queue.Queue)
        handed_out_by = self.load(server, clients=5, requests=10)
        self.assertEqual(handed_out_by[True], 0)
        self.assertGreaterEqual(handed_out_by[False], 50)  # each request, and each close

    def test_a_lone_client_is_answered_at_once_request_after_request(self):
        """The worker that runs dry wakes the selector thread itself, at once: without
        that the selector thread slept a round (here made 5 s) before looking again."""
        server = serve_in_thread(self.compute_app, threads=4, expiration_interval=5)
        self.addCleanup(server.stop)
        server.requests._queue.TICK = 60  # its watchdog, which also wakes the selector, held back
        time.sleep(0.05)
        conn = http.client.HTTPConnection(*server.bind_addr, timeout=10)
        self.addCleanup(conn.close)
        started = time.monotonic()
        for _ in range(10):
            time.sleep(0.02)  # a client that thinks: its next request finds the worker idle
            conn.request('GET', '/')
            self.assertEqual(conn.getresponse().read(), b'ok')
        self.assertLess(time.monotonic() - started, 4)

    def test_a_new_request_is_answered_while_a_handler_computes(self):
        """A worker computing for seconds does not look between requests: once it counts
        as stalled (PacedQueue.STALL), the selector thread looks instead, at once, not
        at its next round (here made 5 s)."""
        server = serve_in_thread(self.compute_app, threads=4, expiration_interval=5)
        self.addCleanup(server.stop)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            computing = pool.submit(request, 'GET', '/compute?3', port=server.bind_addr[1], timeout=10)
            time.sleep(0.3)  # the computation runs
            started = time.monotonic()
            self.assertEqual(request('GET', '/', port=server.bind_addr[1])[0], 200)
            self.assertLess(time.monotonic() - started, 2)
            self.assertEqual(computing.result()[2], b'ok')


class PacedQueueTest(unittest.TestCase):
    """production.PacedQueue with real threads: few threads while they keep up, more as
    soon as they block, and a stop that reaches every thread."""

    def run_workers(self, work, items, threads=8, tick=None):
        """`threads` pool threads take items until told to stop; returns who took what."""
        pool = production.PacedQueue(threads)
        if tick:
            pool.TICK = tick  # this queue's watchdog only, from its next tick on
        taken = []

        def worker():
            while True:
                item = pool.get()
                if item is production._STOP_WORKER:
                    return
                taken.append(threading.current_thread().name)
                work()

        workers = [threading.Thread(target=worker, name='worker %d' % i) for i in range(threads)]
        for thread in workers:
            thread.start()
        time.sleep(0.05)  # every thread now sleeps in get()
        try:
            for item in range(items):
                pool.put(item)
            deadline = time.monotonic() + 10
            while len(taken) < items and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            for _ in workers:
                pool.put(production._STOP_WORKER)
            for thread in workers:
                thread.join(10)
            pool.closed = True
        self.assertFalse(any(thread.is_alive() for thread in workers), 'a thread missed its stop')
        self.assertEqual(len(taken), items)
        return taken

    def test_one_thread_takes_the_work_while_it_keeps_up(self):
        # The watchdog is held back, so this checks the hand-out alone: cheroot's queue
        # would spread these 200 items over all 8 threads.
        taken = self.run_workers(lambda: sum(range(2000)), items=200, tick=60)
        self.assertEqual(len(set(taken)), 1, set(taken))

    def test_at_full_cpu_the_running_threads_drop_one_at_a_time(self):
        """A full core gains nothing from another thread, waiting requests or not: halving
        only when nothing waited left a CPU-bound load on 2-4 threads after one noisy tick.
        One at a time, not halved: handlers waiting 5 ms on I/O lost a quarter of their
        throughput to halving."""
        pool = production.PacedQueue(8)
        pool.closed = True
        time.sleep(3 * pool.TICK)  # its watchdog has ended; _pace is driven by hand below
        pool.active = 8
        pool._items.append('a waiting request')
        pool._pace(time.monotonic(), used=1.0)
        self.assertEqual(pool.active, 7)
        pool._pace(time.monotonic(), used=0.8)  # between the marks: no change
        self.assertEqual(pool.active, 7)
        pool._pace(time.monotonic(), used=0.2)  # waiting, and the process mostly idle
        self.assertEqual(pool.active, 8)
        pool._items.clear()
        pool.active = 2
        for _ in range(3):
            pool._pace(time.monotonic(), used=1.0)
        self.assertEqual(pool.active, 1)  # never below one

    def test_a_container_cpu_limit_scales_the_busy_mark(self):
        """Under a 500m limit the process never uses 75% of a whole core: "busy" is
        measured against the limit, read from cgroup v2's cpu.max."""
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, 'cpu.max')
            for text, cores in (('50000 100000', 0.5), ('max 100000', 1.0), ('300000 100000', 1.0)):
                with open(path, 'w') as limit:
                    limit.write(text + '\n')
                self.assertEqual(production._cpu_limit(path), cores, text)
        self.assertEqual(production._cpu_limit(os.path.join(folder, 'missing')), 1.0)

    def test_blocked_threads_bring_in_more(self):
        started = time.monotonic()
        taken = self.run_workers(lambda: time.sleep(0.3), items=8)
        # One thread at a time would take 2.4 s; all 8 at once take 0.3 s and a few ticks.
        self.assertLess(time.monotonic() - started, 1.5)
        self.assertEqual(len(set(taken)), 8, taken)


class SettingsTest(unittest.TestCase):

    def test_bad_values_name_the_variable(self):
        cases = {'PORT': ['abc', '70000', '0', '-1', '8080.5'], 'THREAD_POOL': ['0', 'many'],
                 'DEV': ['maybe'], 'HOST': ['', 'a b'], 'DRAIN_SECONDS': ['-3'],
                 'STATIC_MAX_AGE': ['forever'], 'TRUST_PROXY': ['2']}
        for name, values in cases.items():
            for value in values:
                with self.assertRaises(settings.SettingError) as caught:
                    settings.read_environment({name: value})
                self.assertTrue(str(caught.exception).startswith(f'{name}={value!r}: '))

    def test_good_values_are_parsed(self):
        values = settings.read_environment({'PORT': '9000', 'DEV': 'yes', 'TRUST_PROXY': 'off',
                                            'HOST': '127.0.0.1', 'UNRELATED': 'x'})
        self.assertEqual(values, {'PORT': 9000, 'DEV': True, 'TRUST_PROXY': False,
                                  'HOST': '127.0.0.1'})

    def test_process_wide_keys_take_effect_but_stay_out_of_requests(self):
        keys = request('GET', '/test/config_keys')[2].decode().split()
        self.assertIn('tools.gzip.on', keys)  # per-request keys still reach each request
        self.assertEqual([k for k in keys if k.split('.')[0] in settings.PROCESS_WIDE], [])
        self.assertEqual(cherrypy.server.thread_pool, THREADS)  # applied all the same
        self.assertEqual(cherrypy.server.socket_port, PORT)

    def test_a_missing_or_broken_config_file_exits_2(self):
        with tempfile.TemporaryDirectory() as folder:
            broken = os.path.join(folder, 'prod.conf')
            with open(broken, 'w') as f:
                f.write('[global]\nserver.socket_port: eighty\n')
            bad_headers = os.path.join(folder, 'headers.conf')
            with open(bad_headers, 'w') as f:
                f.write("[global]\nops.response_headers: {'X-Evil': 'a\\r\\nSet-Cookie: b'}\n")
            bad_name = os.path.join(folder, 'name.conf')
            with open(bad_name, 'w') as f:
                f.write("[global]\nops.response_headers: {'X-Frame-Options: DENY': ''}\n")
            for path in (os.path.join(folder, 'missing.conf'), broken, bad_headers, bad_name):
                with mock.patch('sys.stderr') as stderr, self.assertRaises(SystemExit) as caught:
                    settings.load(path, folder, environ={})
                self.assertEqual(caught.exception.code, 2)
                printed = ''.join(c.args[0] for c in stderr.write.call_args_list)
                self.assertTrue(printed.startswith('Bad setting: '), printed)
                self.assertEqual(printed.count('\n'), 1)



# A server with a slow handler, as a user would add one; for the signal tests.
SLOW_SERVER = """
import time, cherrypy, run
run.Landing.slow = cherrypy.expose(lambda self, s='1': time.sleep(float(s)) or 'done')
run.main()
"""


class ProcessTest(unittest.TestCase):
    """`python run.py` as a user runs it."""

    def run_bad(self, env, cwd=HERE):
        full = dict(os.environ, HOST='127.0.0.1', PORT=str(free_port()), ADMIN_PORT='0')
        full.update(env)
        return subprocess.run([sys.executable, os.path.join(cwd, 'run.py')], env=full, cwd=cwd,
                              capture_output=True, text=True, timeout=20)

    def test_bad_settings_print_one_line_and_exit_2(self):
        for env, name in (({'PORT': 'abc'}, 'PORT'), ({'PORT': '70000'}, 'PORT'),
                          ({'THREAD_POOL': '0'}, 'THREAD_POOL'), ({'DEV': 'perhaps'}, 'DEV')):
            done = self.run_bad(env)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertEqual(done.stderr.count('\n'), 1, done.stderr)
            self.assertIn(name, done.stderr)
            self.assertNotIn('Traceback', done.stderr)

    def test_missing_prod_conf_exits_2(self):
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(os.path.join(HERE, 'run.py'), folder)  # the code, without prod.conf
            shutil.copytree(os.path.join(HERE, 'server'), os.path.join(folder, 'server'))
            done = self.run_bad({}, cwd=folder)
        self.assertEqual(done.returncode, 2)
        self.assertIn('prod.conf', done.stderr)
        self.assertEqual(done.stderr.count('\n'), 1, done.stderr)

    def test_port_in_use_says_so_and_exits(self):
        with socket.create_server(('127.0.0.1', 0)) as taken:
            port = taken.getsockname()[1]
            started = time.monotonic()
            done = self.run_bad({'PORT': str(port)})
        self.assertEqual(done.returncode, 1)
        self.assertIn(f'PORT={port}', done.stderr)
        self.assertEqual(done.stderr.count('\n'), 1, done.stderr)
        self.assertLess(time.monotonic() - started, 10)

    def test_start_up_line_and_sigterm_exits_0(self):
        proc, port, _ = start_server()
        try:
            self.assertEqual(request('GET', '/', port=port)[0], 200)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=15)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn(f'Serving on http://127.0.0.1:{port} with 100 threads '
                      f'(environment: production', out)

    def test_works_from_another_working_directory(self):
        with tempfile.TemporaryDirectory() as elsewhere:
            code = f'import sys; sys.path.insert(0, {HERE!r}); import run; run.main()'
            proc, port, _ = start_server(code=code, cwd=elsewhere)
            try:
                self.assertEqual(request('GET', '/logo.png', port=port)[0], 200)
                self.assertEqual(request('GET', '/static/style.css', port=port)[0], 200)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=15)

    def test_dev_mode_shows_tracebacks_and_reloads_production_does_not(self):
        code = ('import run, cherrypy; run.configure(); '
                'print(cherrypy.engine.autoreload.start in cherrypy.engine.listeners["start"], '
                'cherrypy.config["request.show_tracebacks"])')
        for dev, expected in (('1', 'True True'), ('0', 'False False')):
            done = subprocess.run([sys.executable, '-c', code], cwd=HERE, capture_output=True,
                                  text=True, env=dict(os.environ, DEV=dev), timeout=20)
            self.assertEqual(done.stdout.strip(), expected, done.stderr)

    def test_sigterm_finishes_requests_in_flight(self):
        proc, port, _ = start_server(code=SLOW_SERVER)
        try:
            with concurrent.futures.ThreadPoolExecutor(20) as pool:
                calls = [pool.submit(request, 'GET', '/slow?s=1', port=port, timeout=10)
                         for _ in range(20)]
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)
                results = [f.result() for f in calls]
        finally:
            out, err = stop(proc)
        self.assertEqual([r[0] for r in results], [200] * 20)
        self.assertTrue(all(r[2] == b'done' for r in results))
        self.assertEqual(proc.returncode, 0, err)

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


# Two worker processes, each reporting its process id.
WORKERS_SERVER = """
import os, time, cherrypy, run
run.Landing.pid = cherrypy.expose(lambda self: str(os.getpid()))
run.Landing.slow = cherrypy.expose(lambda self, s='1': time.sleep(float(s)) or 'done')
run.main()
"""


class WorkersTest(unittest.TestCase):

    def test_workers_share_the_port_and_stop_together_on_sigterm(self):
        proc, port, _ = start_server({'WORKERS': '2'}, code=WORKERS_SERVER)
        try:
            pids = {request('GET', '/pid', port=port)[2] for _ in range(60)}
            self.assertEqual(len(pids), 2, pids)  # the kernel spread connections over both
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                calls = [pool.submit(request, 'GET', '/slow?s=1', port=port, timeout=10)
                         for _ in range(10)]
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)  # to the parent only, as Docker does
                results = [f.result()[:3:2] for f in calls]
        finally:
            out, err = stop(proc)
        self.assertEqual(results, [(200, b'done')] * 10)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out.count('Serving on'), 2)

    def test_a_worker_dying_stops_the_set_with_status_1(self):
        proc, port, _ = start_server({'WORKERS': '2'}, code=WORKERS_SERVER)
        try:
            victim = int(request('GET', '/pid', port=port)[2])
            os.kill(victim, signal.SIGKILL)
        finally:
            out, err = stop(proc)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f'Worker {victim} exited on its own', err)


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


# --- Dashboards (dashboard.py): keep this block together; delete it with the feature. ---
import json  # noqa: E402

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from server import dashboard  # noqa: E402

TOKEN = 'test-token-0123456789abcdef'


def stats(port=ADMIN_PORT, headers=None):
    status, _, body = request('GET', '/stats', port=port, headers=headers)
    assert status == 200, status
    return json.loads(body)


def metrics(port=ADMIN_PORT, headers=None):
    """{(sample name, sorted label pairs): value}, parsed by prometheus_client's own parser."""
    status, headers, body = request('GET', '/metrics', port=port, headers=headers)
    assert status == 200 and headers['Content-Type'].startswith('text/plain'), status
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def settled(read, expected, seconds=5):
    """A request is counted once its answer is written, a moment after the client has it."""
    deadline = time.monotonic() + seconds
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


class DashboardTest(unittest.TestCase):
    """Counters, /stats, /metrics and /dashboard on the shared server (admin port, no token)."""

    def test_visits_count_landing_page_views_only(self):
        before = stats()
        for method, path in (('GET', '/'), ('GET', '/index'), ('HEAD', '/'), ('GET', '/index/')):
            self.assertEqual(request(method, path)[0], 200)
        for path in ('/logo.png', '/static/style.css', '/healthcheck', '/healthcheck/live',
                     '/no/such/page'):
            request('GET', path)
        request('POST', '/', body=b'x')  # 405: not a visit
        after = settled(lambda: stats()['requests']['total'], before['requests']['total'] + 8)
        self.assertEqual(after, before['requests']['total'] + 8)  # probes are not requests
        now = stats()
        self.assertEqual(now['visits']['total'] - before['visits']['total'], 4)
        # The series moves on at each minute; line the two up so a boundary in between is fine.
        moved = (now['visits']['per_minute_start'] - before['visits']['per_minute_start']) // 60
        self.assertEqual(sum(now['visits']['per_minute'][-1 - moved:])
                         - sum(before['visits']['per_minute'][-1:]), 4)
        self.assertEqual(now['health_probes'] - before['health_probes'], 2)
        self.assertEqual(now['requests']['4xx'] - before['requests']['4xx'], 2)
        self.assertEqual(len(now['visits']['per_minute']), 60)
        self.assertEqual(now['visits']['per_minute_start'] % 60, 0)

    def test_counts_are_exact_under_100_parallel_clients(self):
        before, before_metrics = stats(), metrics()
        clients, each = 100, 5
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda i: [request('GET', '/' if i % 2 else '/index')[0]
                                               for _ in range(each)], range(clients)))
        self.assertEqual(sum(answers, []), [200] * clients * each)
        total = clients * each
        visits = settled(lambda: stats()['visits']['total'], before['visits']['total'] + total)
        self.assertEqual(visits, before['visits']['total'] + total)
        after, after_metrics = stats(), metrics()
        self.assertEqual(after['requests']['2xx'] - before['requests']['2xx'], total)
        self.assertEqual(after['in_flight'], 0)
        for path in ('/', '/index'):
            key = ('http_requests_total', (('path', path), ('status', '200')))
            self.assertEqual(after_metrics[key] - before_metrics.get(key, 0), total / 2)
        self.assertEqual(after_metrics[('visits_total', ())] - before_metrics[('visits_total', ())],
                         total)
        self.assertEqual(after_metrics[('http_request_duration_seconds_count', ())]
                         - before_metrics[('http_request_duration_seconds_count', ())], total)

    def test_metrics_labels_stay_bounded_and_probes_stay_out_of_latency(self):
        before = metrics()
        for i in range(20):
            request('GET', f'/scan/{i}/wp-login.php')
        request('GET', '/static/style.css')
        request('GET', '/logo.png')
        for _ in range(5):
            request('GET', '/healthcheck')
        other = ('http_requests_total', (('path', 'other'), ('status', '404')))
        static = ('http_requests_total', (('path', '/static'), ('status', '200')))
        probes_key = ('health_probes_total', (('status', '200'),))
        count = ('http_request_duration_seconds_count', ())
        after = settled(lambda: metrics()[probes_key], before.get(probes_key, 0) + 5) and metrics()
        self.assertEqual(after[other] - before.get(other, 0), 20)
        self.assertEqual(after[static] - before.get(static, 0), 2)
        self.assertEqual(after[probes_key] - before.get(probes_key, 0), 5)
        self.assertEqual(after[count] - before[count], 22)  # scans and files, not probes
        paths = {dict(labels).get('path') for name, labels in after if name == 'http_requests_total'}
        self.assertFalse(any('scan' in path or 'wp-login' in path for path in paths), paths)
        self.assertEqual(after[('http_threads_busy', ())] + after[('http_threads_idle', ())], THREADS)
        self.assertGreaterEqual(after[('http_requests_in_flight', ())], 0)

    def test_busy_threads_and_requests_in_flight_are_seen(self):
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            slow = [pool.submit(request, 'GET', '/test/sleep?seconds=1') for _ in range(3)]
            time.sleep(0.4)
            during = stats()
            self.assertTrue(all(f.result()[0] == 200 for f in slow))
        self.assertGreaterEqual(during['in_flight'], 3)
        self.assertGreaterEqual(during['threads']['busy'], 3)
        self.assertEqual(during['threads']['busy'] + during['threads']['idle'], THREADS)
        self.assertEqual(settled(lambda: stats()['in_flight'], 0), 0)
        self.assertGreaterEqual(stats()['response_ms']['max'], 1000)  # the sleeps

    def test_pages_are_on_the_admin_port_only(self):
        for path in ('/stats', '/metrics', '/dashboard'):
            self.assertEqual(request('GET', path)[0], 404, path)  # public site: no DASHBOARD_TOKEN
            self.assertEqual(request('GET', path, port=ADMIN_PORT)[0], 200, path)
        self.assertEqual(request('GET', '/stats', port=ADMIN_PORT)[1]['Cache-Control'], 'no-store')

    def test_dashboard_page_and_its_assets_are_served_by_the_admin_port(self):
        status, headers, body = request('GET', '/dashboard', port=ADMIN_PORT)
        self.assertTrue(headers['Content-Type'].startswith('text/html'))
        for asset, kind in (('/static/dashboard.js', 'text/javascript'),
                            ('/static/dashboard.css', 'text/css'), ('/static/logo.png', 'image/png')):
            self.assertIn(f'"{asset}"'.encode(), body)
            status, headers, _ = request('GET', asset, port=ADMIN_PORT)
            self.assertEqual((status, headers['Content-Type']), (200, kind), asset)
        status, _, body = request('GET', '/static/%2e%2e/run.py', port=ADMIN_PORT)
        self.assertIn(status, (400, 403, 404))
        self.assertNotIn(b'def main', body)


class CountersTest(unittest.TestCase):
    """dashboard.Counters alone, with a clock the test moves."""

    def setUp(self):
        self.now = 1_800_000_000.0  # a whole minute
        self.counters = dashboard.Counters(clock=lambda: self.now)

    def visit(self, n=1):
        for _ in range(n):
            self.counters.start(probe=False)
            self.counters.finish('/', 200, 0.001, visit=True)

    def test_per_minute_series_for_the_last_hour(self):
        self.visit(3)
        self.now += 60
        self.visit(2)
        series = self.counters.snapshot()['visits']['per_minute']
        self.assertEqual(series[-2:], [3, 2])
        self.now += 59 * 60  # the first minute is now 60 minutes old: out of the window
        self.visit(1)
        snapshot = self.counters.snapshot()
        self.assertEqual(snapshot['visits']['per_minute'][-1], 1)  # its slot, reused
        self.assertEqual(snapshot['visits']['per_minute'][-60], 2)
        self.assertEqual((snapshot['visits']['last_hour'], snapshot['visits']['total']), (3, 6))
        self.now += 3600 * 5  # a quiet night: nothing stale comes back
        self.assertEqual(self.counters.snapshot()['visits']['per_minute'], [0] * 60)

    def test_percentiles_and_status_classes(self):
        for ms in range(1, 101):
            self.counters.start(probe=False)
            self.counters.finish('/', 500 if ms == 100 else 200, ms / 1000)
        snapshot = self.counters.snapshot()
        self.assertEqual(snapshot['response_ms'], {'p50': 51.0, 'p90': 91.0, 'p99': 100.0,
                                                   'max': 100.0, 'samples': 100})
        self.assertEqual((snapshot['requests']['2xx'], snapshot['requests']['5xx'],
                          snapshot['requests']['total'], snapshot['in_flight']), (99, 1, 100, 0))

    def test_the_reservoir_is_bounded(self):
        for _ in range(dashboard.RESERVOIR + 50):
            self.counters.start(probe=False)
            self.counters.finish('/', 200, 0.001)
        self.assertEqual(self.counters.snapshot()['response_ms']['samples'], dashboard.RESERVOIR)

    def test_each_configuration_gets_its_own_registry(self):
        other = dashboard.Counters()
        self.visit()
        self.assertIsNot(other.registry, self.counters.registry)
        self.assertEqual(self.counters.registry.get_sample_value('visits_total'), 1)
        self.assertEqual(other.registry.get_sample_value('visits_total'), 0)


class DashboardTokenTest(unittest.TestCase):
    """DASHBOARD_TOKEN mounts the pages on the public site, behind a bearer token."""

    def test_token_guards_stats_and_metrics_on_the_public_site(self):
        proc, port, admin = start_server({'DASHBOARD_TOKEN': TOKEN})
        try:
            good = {'Authorization': f'Bearer {TOKEN}'}
            for headers in ({}, {'Authorization': f'Bearer {TOKEN[:-1]}x'},
                            {'Authorization': TOKEN}, {'Authorization': f'Basic {TOKEN}'}):
                for path in ('/stats', '/metrics', '/stats/', '/metrics/', '/%73tats'):
                    status, answer, body = request('GET', path, port=port, headers=headers)
                    self.assertEqual(status, 401, (path, headers))
                    self.assertEqual(answer['WWW-Authenticate'], 'Bearer')
                    self.assertNotIn(b'visits', body)
            self.assertEqual(request('GET', f'/stats?token={TOKEN}', port=port)[0], 404)  # header only
            request('GET', '/', port=port)
            self.assertEqual(settled(lambda: stats(port, good)['visits']['total'], 1), 1)
            self.assertEqual(metrics(port, good)[('visits_total', ())], 1)
            self.assertEqual(request('GET', '/dashboard', port=port)[0], 200)  # holds no data
            self.assertEqual(stats(admin)['visits']['total'], 1)  # admin port: no token needed
        finally:
            proc.send_signal(signal.SIGTERM)
            stop(proc)

    def test_a_short_token_is_a_bad_setting(self):
        env = dict(os.environ, HOST='127.0.0.1', PORT=str(free_port()), ADMIN_PORT='0',
                   DASHBOARD_TOKEN='short')
        done = subprocess.run([sys.executable, os.path.join(HERE, 'run.py')], env=env,
                              capture_output=True, text=True, timeout=20)
        self.assertEqual(done.returncode, 2)
        self.assertEqual(done.stderr.count('\n'), 1, done.stderr)
        self.assertIn('DASHBOARD_TOKEN', done.stderr)
        self.assertNotIn('short', done.stderr)  # a secret is never printed


if __name__ == '__main__':
    testing.main()
