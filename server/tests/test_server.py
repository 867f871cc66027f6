"""Tests of the server machinery (server/): a real server on free loopback ports.

    python -m unittest discover -s server/tests -t .     # from the project folder
    ./testing.sh                                          # with the site's tests, under coverage

Most tests share one server started in this process (setUpModule). Tests of start-up,
bad settings and signals run `python run.py` as a subprocess, as a user would.
"""
import codecs
import collections
import errno
import json
import concurrent.futures
import importlib.util
import http.client
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest

import cheroot.connections
import cheroot.makefile
import cherrypy
import mock

from server import production, settings, testing
from server.testing import (HERE, CaptureLog, flush_access_log, free_port,
                            request, start_server, stop)

THREADS = 8  # small, so that "every worker busy" is cheap to arrange


class Slow:
    """Test-only handlers mounted on the shared server."""

    @cherrypy.expose
    @cherrypy.tools.allow(methods=['POST'])
    @cherrypy.tools.json_in()
    @cherrypy.tools.json_out()
    def greet(self):  # a JSON API as the README shows one
        name = cherrypy.request.json.get('name')
        if not name:
            raise cherrypy.HTTPError(422, 'name is required')
        if name == 'boom':
            raise RuntimeError('secret detail')
        return {'hello': name}

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


class Echo:
    """Test-only handlers under /input: what a handler gets of what the client sent."""

    @cherrypy.expose
    def header(self, name='Referer'):
        return cherrypy.request.headers.get(name, '(none)')

    @cherrypy.expose
    def cookies(self):
        return ' '.join(f'{name}={morsel.value}'
                        for name, morsel in sorted(cherrypy.request.cookie.items()))

    @cherrypy.expose
    @cherrypy.tools.allow(methods=['GET', 'POST'])
    def params(self, **params):
        return ' '.join(f'{name}={value}' for name, value in sorted(params.items()))


def grafted(environ, start_response):
    start_response('200 OK', [('Content-Type', 'text/plain')])
    return [b'grafted ' + environ['PATH_INFO'].encode()]



PORT, ADMIN_PORT = testing.PORT, testing.ADMIN_PORT


def setUpModule():
    testing.shared_site(THREADS, mount={'/test': Slow(), '/input': Echo()})
    if '/grafted' not in cherrypy.tree.apps:
        cherrypy.tree.graft(grafted, '/grafted')


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

    def test_lines_the_output_cannot_take_are_dropped_and_counted(self):
        """With stdout stalled, the queue of lines grew without bound (1 GB in 15 s)."""
        log = cherrypy.tree.apps[''].log
        with mock.patch.object(log, 'QUEUE_LIMIT', 2000), CaptureLog('cherrypy.access') as lines, \
                CaptureLog('cherrypy.error') as errors:
            flush_access_log()
            with log._writing:  # the writer is stuck, as on a full pipe
                for _ in range(40):
                    self.assertEqual(request('GET', '/', headers={'User-Agent': 'u' * 100})[0], 200)
                self.assertLessEqual(log.queued, 2000)
            flush_access_log()
        self.assertTrue(10 <= len(lines.lines) < 20, len(lines.lines))
        self.assertIn(f'{40 - len(lines.lines)} access-log lines dropped: the log output did not '
                      'keep up', '\n'.join(errors.lines))
        self.assertEqual(log.queued, 0)

    def mount_on_the_site(self, page):
        """`page` at /where/ on the site, with TRUST_PROXY on, for this test."""
        app = cherrypy.tree.apps['']
        self.addCleanup(flush_access_log)  # this test's lines, not in the next test's capture
        app.root.where = page
        self.addCleanup(delattr, app.root, 'where')
        patch = mock.patch.dict(app.config['/'], {'tools.trusted_proxy.on': True})
        patch.start()
        self.addCleanup(patch.stop)

    def test_trust_proxy_takes_only_an_address_and_http_or_https(self):
        """X-Forwarded-For reached the log as written (after CherryPy's RFC 2047 decoding:
        a whole forged line); X-Forwarded-Proto went into every URL the app builds."""
        class Where:
            @cherrypy.expose
            def index(self):
                return f'{cherrypy.request.remote.ip} {cherrypy.url("/x")}'
        self.mount_on_the_site(Where())
        forged = '=?utf-8?q?6.6.6.6_-_-_[x]_"GET_/forged_HTTP/1.1"_200_1_"-"_"-"=0A6.6.6.6?='
        for forwarded, proto, seen in (
                ('10.1.2.3, ' + forged, 'https://evil.example/#', '127.0.0.1 http://'),
                ('10.1.2.3, unknown', 'javascript', '127.0.0.1 http://'),
                ('192.0.2.1:8080', 'HTTPS', '192.0.2.1 https://'),
                ('6.6.6.6, [2001:DB8::1]:80', 'http, https', '2001:db8::1 https://'),
                ('10.1.2.3, fe80::1%x y "z"', 'http', '127.0.0.1 http://')):  # a zone id: any text
            status, _, body = request('GET', '/where/', headers={
                'X-Forwarded-For': forwarded, 'X-Forwarded-Proto': proto})
            self.assertEqual(status, 200, body)
            self.assertTrue(body.decode().startswith(seen), (forwarded, proto, body))
            self.assertTrue(body.endswith(b'/x') and b'evil' not in body, body)

    def test_a_field_named_with_underscores_never_replaces_the_proxys(self):
        """X_Forwarded_For and X-Forwarded-For are one WSGI name: the later one won."""
        class Where:
            @cherrypy.expose
            def index(self):
                headers = cherrypy.request.headers
                return (f'{cherrypy.request.remote.ip} {headers.get("X-Request-Id")} '
                        f'{headers.get("X-Custom")} {headers.get("Content-Length")}')
        self.mount_on_the_site(Where())
        answer = testing.raw(b'GET /where/ HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.1.2.3\r\n'
                             b'X-Request-Id: abc\r\nX_Forwarded_For: 6.6.6.6\r\nx_request_id: 666\r\n'
                             b'X_Custom: kept\r\nContent_Length: 5\r\nConnection: close\r\n\r\n')
        self.assertTrue(answer.endswith(b'10.1.2.3 abc kept None'), answer)  # framing: never


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


def serve_in_thread(app, timeout=10, threads=2, expiration_interval=0.5, backlog=64, **options):
    """A production.AdminServer on a free loopback port, serving from a thread; stop() it.
    expiration_interval: the selector thread's longest sleep (cheroot's, 0.5 s).
    backlog: the listen queue (server.socket_queue_size).
    options: cheroot's, e.g. accepted_queue_size and accepted_queue_timeout."""
    server = production.AdminServer(('127.0.0.1', 0), app, numthreads=threads,
                                    request_queue_size=backlog, **options)
    server.tune(keep_alive_timeout=60, keep_alive_limit=100)
    server.timeout = timeout  # server.socket_timeout
    server.expiration_interval = expiration_interval
    server.prepare()
    threading.Thread(target=server.serve, daemon=True).start()
    return server


def at_once(count, client, timeout):
    """Run client() in `count` threads started together; wait up to `timeout` for each."""
    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)


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

    def test_bytes_behind_a_last_answer_leave_the_buffer_count(self):
        """A connection a worker closes (Connection: close, HTTP/1.0) with a pipelined
        request behind its answer: those bytes stayed counted against BUFFER_BUDGET for
        good. A thousand such connections and every request not arriving in one read got 503."""
        server = self._serve_echo()
        manager = server._connections
        for first in (b'GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
                      b'GET /a HTTP/1.0\r\n\r\n'):
            with socket.create_connection(server.bind_addr) as client:
                client.sendall(first + b'POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 50000'
                               b'\r\n\r\n' + b'x' * 20000)
                client.settimeout(5)
                while client.recv(1000):  # the answer, then the server closes
                    pass
            self.assertTrue(self.wait_until(lambda: manager._held == 0),
                            f'{manager._held} bytes still counted')

    @staticmethod
    def wait_until(condition, seconds=2):
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        return condition()

    def test_a_header_too_large_still_gets_an_error(self):
        server = self._serve_echo()
        server.max_request_header_size = 4096
        with socket.create_connection(server.bind_addr) as client:
            client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nX-Echo: ' + b'v' * 8000 + b'\r\n\r\n')
            client.settimeout(5)
            self.assertRegex(client.recv(100), rb'^HTTP/1\.1 4(13|31) ')


class BusyThreadsTest(unittest.TestCase):

    def test_new_connections_are_accepted_while_every_thread_is_busy(self):
        """100 clients at once, 10 threads, a handler of 0.5 s, CherryPy's default listen
        backlog of 5: about 5 s, as with stock cheroot, whose selector accepts all along. It
        took 15 s when the selector stopped accepting while the threads were busy: connects
        past the backlog were dropped and retried by the clients' kernels 1, 3, 7 s later."""
        def app(environ, start_response):
            time.sleep(0.5)
            start_response('200 OK', [('Content-Length', '2')])
            return [b'ok']

        server = serve_in_thread(app, threads=10, backlog=5)
        self.addCleanup(server.stop)
        answers = []

        def client():
            with socket.create_connection(server.bind_addr, timeout=30) as sock:
                sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
                answers.append(sock.recv(100)[:12])

        started = time.monotonic()
        at_once(100, client, timeout=60)
        self.assertEqual(answers, [b'HTTP/1.1 200'] * 100)
        self.assertLess(time.monotonic() - started, 9)


class SlowReaderTest(unittest.TestCase):
    """A client that reads its answer slowly holds no worker: what it has not taken waits
    in the connection's outbox, a static file as the open file, and the selector sends it
    as the client reads. One worker thread here: a held worker would show at once."""

    BIG = os.urandom(12 << 20)  # more than the kernel's socket buffers take (4 MiB here)

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()
        cls.path = os.path.join(cls.dir, 'big.bin')
        with open(cls.path, 'wb') as f:
            f.write(cls.BIG)
        from cherrypy.lib import static
        path, big = cls.path, cls.BIG

        class Root:
            @cherrypy.expose
            def index(self):
                return 'ok'

            @cherrypy.expose
            def memory(self):
                return big

            @cherrypy.expose
            def file(self):
                return static.serve_file(path, 'application/octet-stream')

            @cherrypy.expose
            def pieces(self):  # streamed, in 4 KiB pieces
                return (big[i:i + 4096] for i in range(0, 8 << 20, 4096))
            pieces._cp_config = {'response.stream': True}

        cls.app = cherrypy.Application(Root(), config={'/': {'tools.gzip.on': False}})

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    def serve(self, timeout=5, stop_at_end=True):
        cap = mock.patch.object(production._SocketWriter, 'OUTBOX_CAP', 32 << 20)
        cap.start()
        self.addCleanup(cap.stop)
        server = serve_in_thread(self.app, timeout=timeout, threads=1)
        if stop_at_end:
            self.addCleanup(server.stop)
        return server

    def slow_client(self, server, paths):
        client = socket.create_connection(server.bind_addr)  # and reads nothing, for now
        self.addCleanup(client.close)
        client.sendall(b''.join(b'GET %s HTTP/1.1\r\nHost: x\r\n\r\n' % path for path in paths))
        return client

    def assert_served_meanwhile(self, server):
        started = time.monotonic()
        status, _, body = request('GET', '/', port=server.bind_addr[1], timeout=4)
        self.assertEqual((status, body), (200, b'ok'))
        self.assertLess(time.monotonic() - started, 1.0)  # a held worker: 5 s or more

    def read_answers(self, client, count):
        client.settimeout(10)
        data, answers = b'', []
        while len(answers) < count:
            chunk = client.recv(1 << 20)
            self.assertTrue(chunk, f'closed after {len(answers)} answers')
            data += chunk
            while b'\r\n\r\n' in data:
                head, rest = data.split(b'\r\n\r\n', 1)
                length = int(re.search(rb'(?i)content-length: *(\d+)', head).group(1))
                if len(rest) < length:
                    break
                answers.append((head.split(b' ', 2)[1], rest[:length]))
                data = rest[length:]
        return answers

    def wait_until(self, condition, seconds=5):
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        return condition()

    def test_a_slow_reader_of_an_answer_from_memory_holds_no_worker(self):
        server = self.serve()
        client = self.slow_client(server, [b'/memory'])
        self.assertTrue(self.wait_until(lambda: server.outbox_budget.used > 0))
        self.assert_served_meanwhile(server)
        self.assertEqual(self.read_answers(client, 1), [(b'200', self.BIG)])
        self.assertTrue(self.wait_until(lambda: server.outbox_budget.used == 0))

    def test_a_slow_reader_of_a_static_file_holds_neither_a_worker_nor_its_bytes(self):
        server = self.serve()
        client = self.slow_client(server, [b'/file'])
        time.sleep(0.5)
        self.assert_served_meanwhile(server)
        # In memory: at most the piece of the file being sent when the client fell behind.
        self.assertLess(server.outbox_budget.used, 128 << 10)
        self.assertEqual(self.read_answers(client, 1), [(b'200', self.BIG)])

    def test_a_slow_reader_of_a_range_of_a_static_file_holds_neither(self):
        """Range: bytes=1000- (as media players ask): the rest goes from the file too."""
        server = self.serve()
        client = socket.create_connection(server.bind_addr)
        self.addCleanup(client.close)
        client.sendall(b'GET /file HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-\r\n\r\n')
        time.sleep(0.5)
        self.assert_served_meanwhile(server)
        self.assertLess(server.outbox_budget.used, 128 << 10)
        self.assertEqual(self.read_answers(client, 1), [(b'206', self.BIG[1000:])])

    def test_the_site_serves_through_this_gateway(self):
        self.assertIs(cherrypy.server.httpserver.gateway, production._Gateway)

    def test_past_the_memory_budget_an_answer_waits_in_a_temporary_file(self):
        with mock.patch.object(production.TunedServer, 'OUTBOX_BUDGET', 1 << 20):
            server = self.serve()
        client = self.slow_client(server, [b'/memory'])
        self.assertTrue(self.wait_until(lambda: server.spill_budget.used > 0))
        self.assertEqual(server.outbox_budget.used, 0)
        self.assert_served_meanwhile(server)
        self.assertEqual(self.read_answers(client, 1), [(b'200', self.BIG)])
        self.assertTrue(self.wait_until(lambda: server.spill_budget.used == 0))

    def test_a_streamed_answer_past_the_memory_budget_takes_one_temporary_file(self):
        """Each write() past the memory budget made a temporary file of its own, each an open
        descriptor: a slow reader of a stream in small pieces took hundreds, thousands."""
        with mock.patch.object(production.TunedServer, 'OUTBOX_BUDGET', 1 << 20):
            server = self.serve()
        fds = len(os.listdir('/proc/self/fd'))
        client = self.slow_client(server, [b'/pieces', b'/'])
        self.assertTrue(self.wait_until(lambda: server.spill_budget.used > (1 << 20)))
        time.sleep(0.3)  # the stream has ended: the worker is free
        self.assertLess(len(os.listdir('/proc/self/fd')) - fds, 8)  # it was 500 and more
        self.assert_served_meanwhile(server)
        client.settimeout(10)
        head = b''
        while b'\r\n\r\n' not in head:
            head += client.recv(1)
        self.assertIn(b'Transfer-Encoding: chunked', head)
        body, data = b'', b''
        while True:  # chunked: "1000\r\n" 4096 bytes "\r\n", then "0\r\n\r\n"
            while b'\r\n' not in data:
                data += client.recv(1 << 20)
            size, data = data.split(b'\r\n', 1)
            size = int(size, 16)
            while len(data) < size + 2:
                data += client.recv(1 << 20)
            body, data = body + data[:size], data[size + 2:]
            if not size:
                break
        self.assertEqual(body, self.BIG[:8 << 20])
        while not data.endswith(b'\r\n\r\nok'):  # the answer that follows
            data += client.recv(1 << 20)
        self.assertTrue(data.startswith(b'HTTP/1.1 200 OK\r\n'))
        self.assertTrue(self.wait_until(lambda: server.spill_budget.used == 0))
        self.assertEqual(server.outbox_budget.used, 0)

    def test_pipelined_answers_to_a_slow_reader_arrive_whole_and_in_order(self):
        server = self.serve()
        client = self.slow_client(server, [b'/file', b'/memory', b'/', b'/file'])
        time.sleep(0.5)
        self.assert_served_meanwhile(server)
        self.assertEqual(self.read_answers(client, 4), [(b'200', self.BIG), (b'200', self.BIG),
                                                        (b'200', b'ok'), (b'200', self.BIG)])

    def test_a_reader_that_stops_is_dropped_at_the_answers_deadline(self):
        """socket_timeout 1 s plus 1 s per 64 MiB: the connection is closed after about
        a second, its file closed and its memory given back, and the server serves on."""
        fds = len(os.listdir('/proc/self/fd'))
        with mock.patch.object(production._SocketWriter, 'SEND_RATE', 64 << 20):
            server = self.serve(timeout=1)
            clients = [self.slow_client(server, [b'/file', b'/memory'][i % 2:]) for i in range(4)]
            self.assertTrue(self.wait_until(lambda: server.outbox_budget.used > 0))
            started = time.monotonic()
            self.assertTrue(self.wait_until(lambda: server.outbox_budget.used == 0))
            self.assertLess(time.monotonic() - started, 5)
            self.assert_served_meanwhile(server)
        for client in clients:
            client.close()
        # The running server's own: its listener, epoll and wake pipe (2).
        self.assertTrue(self.wait_until(lambda: len(os.listdir('/proc/self/fd')) <= fds + 4),
                        'a file or socket was left open')

    def test_a_stop_finishes_what_a_reader_is_owed_and_refuses_new_connections(self):
        """As stock cheroot's workers would: the answers go on until server.shutdown_timeout."""
        server = self.serve(stop_at_end=False)
        server.shutdown_timeout = 10
        clients = [self.slow_client(server, [b'/file']), self.slow_client(server, [b'/memory'])]
        self.assertTrue(self.wait_until(lambda: server.outbox_budget.used > 0))
        time.sleep(0.3)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        time.sleep(0.5)
        self.assertTrue(stopping.is_alive())
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(server.bind_addr, timeout=2).close()
        self.assertEqual([answer for client in clients for answer in self.read_answers(client, 1)],
                         [(b'200', self.BIG), (b'200', self.BIG)])
        stopping.join(5)
        self.assertFalse(stopping.is_alive())

    def test_a_stop_with_answers_owed_closes_everything(self):
        fds = len(os.listdir('/proc/self/fd'))
        server = self.serve(stop_at_end=False)
        server.shutdown_timeout = 1
        clients = [self.slow_client(server, [b'/file']), self.slow_client(server, [b'/memory'])]
        self.assertTrue(self.wait_until(lambda: server.outbox_budget.used > 0))
        time.sleep(0.3)
        started = time.monotonic()
        server.stop()
        self.assertLess(time.monotonic() - started, 3)  # shutdown_timeout, then what is owed is dropped
        self.assertEqual(server.outbox_budget.used, 0)
        for client in clients:
            client.close()
        self.assertTrue(self.wait_until(lambda: len(os.listdir('/proc/self/fd')) <= fds + 1),
                        'a file or socket was left open')

    def test_a_stop_owing_answers_reads_the_other_connections_without_spinning(self):
        """While a stop sends what a slow reader is owed, a kept-alive client that closes, or
        sends a request, makes its connection readable: it was never read, so select()
        returned at once, round after round, a busy loop until shutdown_timeout."""
        server = self.serve(stop_at_end=False)
        server.shutdown_timeout = 1.5
        self.slow_client(server, [b'/memory'])
        kept = []
        for _ in range(2):
            client = socket.create_connection(server.bind_addr, timeout=5)
            self.addCleanup(client.close)
            client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
            self.assertTrue(client.recv(1000).endswith(b'ok'))
            kept.append(client)
        self.assertTrue(self.wait_until(lambda: server.outbox_budget.used > 0))
        selector = server._connections._selector
        selects, select = [], selector.select
        with mock.patch.object(selector, 'select',
                               lambda timeout=None: selects.append(1) or select(timeout)):
            stopping = threading.Thread(target=server.stop)
            stopping.start()

            def refused():  # the stop is sending what is owed: the listener refuses
                try:
                    socket.create_connection(server.bind_addr, timeout=1).close()
                except (ConnectionRefusedError, ConnectionResetError):  # reset: closed as it came
                    return True
                return False
            self.assertTrue(self.wait_until(refused, 1))
            kept[0].close()
            kept[1].sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')  # answered, as it arrived
            self.assertTrue(kept[1].recv(1000).startswith(b'HTTP/1.1 200 OK'))
            stopping.join(5)
        self.assertFalse(stopping.is_alive())
        self.assertLess(len(selects), 100)  # 1.5 s of 50 ms waits; spinning: tens of thousands

    def test_a_stop_ends_a_worker_waiting_for_a_slow_reader_at_shutdown_timeout(self):
        """An answer past OUTBOX_CAP holds its worker until the client takes it. At a stop
        the selector sent what another reader was owed for shutdown_timeout, then the pool
        waited another shutdown_timeout for that worker, then cheroot's _force_close failed
        on _RequestReader (no `closed`): stop() raised, and the process exited 70."""
        server = self.serve(stop_at_end=False)
        server.shutdown_timeout = 1
        self.slow_client(server, [b'/file'])  # the file's rest: the selector sends it
        self.assertTrue(self.wait_until(lambda: any(
            conn.sending for _, conn in list(server._connections._selector.connections)
            if conn is not server)))
        with mock.patch.object(production._SocketWriter, 'OUTBOX_CAP', 1 << 20):
            self.slow_client(server, [b'/memory'])  # 12 MiB: the one worker waits
            time.sleep(0.5)
            started = time.monotonic()
            server.stop()  # raised AttributeError after 2 s
        self.assertLess(time.monotonic() - started, 1.7)
        self.assertEqual(server.outbox_budget.used, 0)


class OneSendTest(unittest.TestCase):

    def test_a_small_answer_leaves_in_one_send(self):
        """Status line, headers and body go out in one system call, not two."""
        sent, write, writev, sendall = [], os.write, os.writev, socket.socket.sendall

        def counted(send, data, pieces):
            if pieces and bytes(pieces[0]).startswith(b'HTTP/'):  # the server's side
                sent.append(b''.join(map(bytes, pieces)))
            return send(*data)

        with mock.patch.object(os, 'write', lambda *a: counted(write, a, [a[1]])), \
                mock.patch.object(os, 'writev', lambda *a: counted(writev, a, a[1])), \
                mock.patch.object(socket.socket, 'sendall',
                                  lambda *a: counted(sendall, a, [a[1]])):
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


    def test_stop_leaves_no_thread_behind(self):
        """stop() returns once its threads have ended (serve(), the PacedQueue watchdog), as
        with stock cheroot (its suite: test_overload_thread_does_not_leak)."""
        before = set(threading.enumerate())
        for _ in range(3):
            serve_in_thread(lambda environ, start_response: [], timeout=1).stop()
        self.assertEqual([t.name for t in set(threading.enumerate()) - before], [])

    def test_stop_returns_when_accept_lacks_descriptors(self):
        """stop() serves what the kernel queued; out of descriptors, the listener stays
        readable and that loop never ended (a hang at shutdown under EMFILE)."""
        server = production.AdminServer(('127.0.0.1', 0), lambda e, s: [], numthreads=2,
                                        request_queue_size=64)
        server.prepare()
        clients = [socket.create_connection(server.bind_addr) for _ in range(3)]
        no_fds = OSError(errno.EMFILE, 'Too many open files')
        try:
            with mock.patch.object(cheroot.connections.ConnectionManager, '_from_server_socket',
                                   side_effect=no_fds):
                stopping = threading.Thread(target=server.stop, daemon=True)
                stopping.start()
                stopping.join(5)
            self.assertFalse(stopping.is_alive(), 'stop() still running after 5 s')
        finally:
            for client in clients:
                client.close()

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
                 'DEV': ['maybe'], 'HOST': ['', 'a b', '999.1.1.1', 'no-such-host.invalid'],
                 'DRAIN_SECONDS': ['-3'],
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

    def test_a_misspelled_key_or_bad_server_value_in_prod_conf_exits_2(self):
        """Each of these started: a traceback (exit 1) and the server up, or every request
        (every /static/ one) failing."""
        with open(os.path.join(HERE, 'prod.conf')) as f:
            shipped = f.read()
        for old, new, said in (
                ('server.thread_pool: 100', 'server.thread_pol: 100', 'did you mean server.thread_pool?'),
                ('ops.keep_alive_timeout: 65', 'ops.keep_alive_timout: 65',
                 'ops.keep_alive_timeout is missing (is ops.keep_alive_timout a misspelling of it?)'),
                ('server.socket_timeout: 10', 'server.socket_timeout: -5', 'server.socket_timeout: -5: must'),
                ('server.max_request_body_size: 1048576', 'server.max_request_body_size: -1',
                 'server.max_request_body_size: -1: must be a whole number'),
                ("tools.staticdir.dir: 'static'", "tools.staticdir.dri: 'static'", 'did you mean dir?'),
                ("tools.staticdir.dir: 'static'", '', 'tools.staticdir.on needs tools.staticdir.dir'),
                ('server.thread_pool: 100', 'server.thread_pool: abc', 'thread_pool: abc: must be a value')):
            self.assertIn(old, shipped)
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, 'prod.conf')
                with open(path, 'w') as f:
                    f.write(shipped.replace(old, new))
                with mock.patch('sys.stderr') as stderr, self.assertRaises(SystemExit) as caught:
                    settings.load(path, folder, environ={})
            self.assertEqual(caught.exception.code, 2)
            printed = ''.join(c.args[0] for c in stderr.write.call_args_list)
            self.assertTrue(printed.startswith('Bad setting: prod.conf: '), printed)
            self.assertIn(said, printed)

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



class JsonErrorsTest(unittest.TestCase):
    """A handler with tools.json_out answers its errors in JSON, with the right status."""

    def post(self, body, content_type='application/json'):
        status, headers, answer = request('POST', '/test/greet', body=body,
                                          headers={'Content-Type': content_type})
        return status, headers['Content-Type'], json.loads(answer)

    def test_a_good_body_gets_its_answer(self):
        self.assertEqual(self.post(b'{"name": "Ada"}'), (200, 'application/json', {'hello': 'Ada'}))

    def test_errors_are_json_with_their_status(self):
        for body, content_type, status in ((b'{"nam', 'application/json', 400),
                                           (b'{}', 'application/json', 422),
                                           (b'name=Ada', 'application/x-www-form-urlencoded', 415)):
            answer = self.post(body, content_type)
            self.assertEqual(answer[:2], (status, 'application/json'), body)
            self.assertTrue(answer[2]['status'].startswith(str(status)), answer)
        self.assertEqual(self.post(b'{}')[2]['message'], 'name is required')

    def test_get_of_a_post_only_handler_is_405_not_500(self):
        status, headers, body = request('GET', '/test/greet')
        self.assertEqual((status, headers['Allow']), (405, 'POST'))
        self.assertEqual(json.loads(body)['status'], '405 Method Not Allowed')

    def test_an_exception_is_a_bare_json_500(self):
        with CaptureLog('cherrypy.error'):
            status, content_type, answer = self.post(b'{"name": "boom"}')
        self.assertEqual((status, content_type), (500, 'application/json'))
        self.assertNotIn('secret', json.dumps(answer))
        self.assertNotIn('traceback', answer)

    def test_other_pages_keep_html_errors(self):
        status, headers, body = request('GET', '/no/such/page')
        self.assertEqual(status, 404)
        self.assertTrue(body.startswith(b'<!DOCTYPE html>'), body)

    def test_html_errors_are_labelled_html_whatever_the_page_had_set(self):
        """As stock's error page: a 416 of /logo.png was labelled image/png (and sent with
        nosniff), a 404 had no charset."""
        for path, headers, status in (('/no/such/page', {}, 404),
                                      ('/logo.png', {'Range': 'bytes=999999-'}, 416),
                                      ('/static/style.css', {'Range': 'bytes=999999-'}, 416)):
            answer = request('GET', path, headers=headers)
            self.assertEqual((answer[0], answer[1]['Content-Type']),
                             (status, 'text/html;charset=utf-8'), path)
            self.assertTrue(answer[2].startswith(b'<!DOCTYPE html>'), path)


LOGO = os.path.join(HERE, 'static', 'logo.png')


class ClientInputTest(unittest.TestCase):
    """What a client sends that stock CherryPy answered 500 (and logged a traceback for):
    ignored where HTTP allows it, else 400 (server/client_input.py). Valid requests are
    served as before."""

    def setUp(self):
        self.errors = CaptureLog('cherrypy.error').__enter__()
        self.addCleanup(self.errors.__exit__, None, None, None)

    def tearDown(self):
        flush_access_log()  # this test's lines, before another test captures the log
        for line in self.errors.lines:  # not one traceback, whatever the client sent
            self.assertNotIn('Traceback', line)

    def get(self, path, **headers):
        return request('GET', path, headers={name.replace('_', '-'): value
                                             for name, value in headers.items()})

    def test_a_malformed_qvalue_is_ignored_not_a_500(self):
        # gzip;q=x: nginx's answer too (uncompressed); the other elements still count.
        for accept, gzipped in (('gzip;q=x', False), ('gzip;q=', False), ('gzip; Q = x', False),
                                ('gzip;q="0.5"', False), ('identity;q=x', False),
                                ('gzip, br;q=x', True), ('gzip;q=1, br;q=x', True),
                                ('br;q=x, gzip;q=0.5', True), ('gzip', True), ('gzip;q=0.8', True),
                                ('gzip;q=0', False)):
            for path in ('/', '/static/style.css', '/no/such/page'):
                status, headers, _ = self.get(path, Accept_Encoding=accept)
                self.assertEqual((status, headers['Content-Encoding'] == 'gzip'),
                                 (404 if path == '/no/such/page' else 200, gzipped), (path, accept))
        # CherryPy's encode tool answered these 400 on every page: ignored alike.
        for charset in ('utf-8;q=x', 'iso-8859-1;q=x, utf-8', ';q='):
            status, headers, _ = self.get('/', Accept_Charset=charset)
            self.assertEqual((status, headers['Content-Type']), (200, 'text/html;charset=utf-8'))
        self.assertEqual(self.get('/', Accept_Charset='utf-8;q=0, *;q=0')[0], 406)  # as before

    def test_a_range_of_a_text_file_is_sent_uncompressed(self):
        """Content-Range counts the file's bytes: a gzipped body broke resumed downloads."""
        with open(os.path.join(HERE, 'static', 'style.css'), 'rb') as f:
            css = f.read()
        status, headers, body = self.get('/static/style.css', Range='bytes=10-29',
                                         Accept_Encoding='gzip')
        self.assertEqual((status, headers['Content-Encoding'], headers['Content-Range'], body),
                         (206, None, f'bytes 10-29/{len(css)}', css[10:30]))
        status, headers, _ = self.get('/static/style.css', Accept_Encoding='gzip')
        self.assertEqual((status, headers['Content-Encoding']), (200, 'gzip'))  # whole: as before

    def test_codings_the_gzip_tool_does_not_know_get_the_page_uncompressed_not_406(self):
        """RFC 9110 12.5.3: identity is acceptable unless excluded. Stock answered 406 to a
        CDN that normalizes Accept-Encoding to `br`, on every text page."""
        for accept in ('br', 'zstd', 'br, zstd;q=0.5', 'gzip;q=x, br', 'deflate', '*', '*;q=0.5, br'):
            for path in ('/', '/static/style.css', '/no/such/page'):
                status, headers, _ = self.get(path, Accept_Encoding=accept)
                self.assertEqual((status, headers['Content-Encoding']),
                                 (404 if path == '/no/such/page' else 200, None), (path, accept))
        for excluded in ('identity;q=0', '*;q=0', 'br, identity;q=0'):  # as stock: nothing to send
            self.assertEqual(self.get('/', Accept_Encoding=excluded)[0], 406, excluded)
        self.assertEqual(self.get('/', Accept_Encoding='br, gzip')[1]['Content-Encoding'], 'gzip')

    def test_a_malformed_range_is_ignored_and_the_whole_file_sent(self):
        with open(LOGO, 'rb') as f:
            logo = f.read()
        size = len(logo)
        for given in ('bytes=abc', 'bytes=1-a', 'bytes=', 'bytes=,', 'bytes=-', 'bytes=1-2,abc',
                      'bytes=1-2-3', 'bytes=5-1', 'bytes=--1', 'lines=0-1', 'abc', 'bytes=-0',
                      'bytes=' + ','.join(['0-0'] * 201), 'bytes=\xd9\xa1-\xd9\xa2',
                      # overlapping: the file over and over in one answer
                      'bytes=' + ','.join(['0-'] * 200), 'bytes=0-5,3-8', 'bytes=0-1,1-2',
                      'bytes=-5,0-1', 'bytes=0-1,5-'):
            status, headers, body = request('GET', '/logo.png', headers={'Range': given})
            self.assertEqual((status, headers['Content-Range'], body), (200, None, logo), given)
        status, headers, body = request('GET', '/static/style.css', headers={'Range': 'bytes=x'})
        self.assertEqual(status, 200)
        # Valid ranges, as before: 206, 416 when none is satisfiable.
        huge = '9' * 5000  # past what int() reads
        for given, content_range, part in (
                ('bytes=0-1', f'bytes 0-1/{size}', logo[:2]),
                ('Bytes = 0-1', f'bytes 0-1/{size}', logo[:2]),  # any case, spaces as CherryPy took
                ('bytes=-5', f'bytes {size - 5}-{size - 1}/{size}', logo[-5:]),
                ('bytes=1-', f'bytes 1-{size - 1}/{size}', logo[1:]),
                ('bytes= 2 - 3 ,', f'bytes 2-3/{size}', logo[2:4]),
                (f'bytes=0-{huge}', f'bytes 0-{size - 1}/{size}', logo),
                (f'bytes=-{huge}', f'bytes 0-{size - 1}/{size}', logo),
                ('bytes=-0,0-1', f'bytes 0-1/{size}', logo[:2])):
            status, headers, body = request('GET', '/logo.png', headers={'Range': given})
            self.assertEqual((status, headers['Content-Range'], body), (206, content_range, part), given)
        status, headers, body = request('GET', '/logo.png', headers={'Range': 'bytes=0-0,2-2'})
        self.assertEqual((status, headers.get_content_type()), (206, 'multipart/byteranges'))
        for given in (f'bytes={size}-', f'bytes={huge}-', f'bytes={huge}-{huge}'):
            status, headers, _ = request('GET', '/logo.png', headers={'Range': given})
            self.assertEqual((status, headers['Content-Range']), (416, f'bytes */{size}'), given)

    def test_charset_names_a_client_makes_up_are_not_kept_in_memory(self):
        """Python's codec search keeps every name it is asked for: 1,500 made-up names in
        each request's Accept-Charset kept 220 KB a request, for good."""
        def ask(round):
            names = ', '.join(f'x-{round}-{n}-{"y" * 20}' for n in range(450))
            for _ in range(5):
                self.assertEqual(request('GET', '/', headers={'Accept-Charset': names + ', utf-8'})[0], 200)
                round += 1000
                names = names.replace(f'x-{round - 1000}-', f'x-{round}-')
        ask(0)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        ask(1)
        grown = tracemalloc.get_traced_memory()[0] - before
        self.assertLess(grown, 250_000, grown)  # before: 390 KB
        self.assertEqual(codecs.lookup('UTF8').name, 'utf-8')  # known names: as before
        self.assertEqual(codecs.lookup('latin-1').name, 'iso8859-1')

    def test_a_server_fault_parsing_a_body_is_not_blamed_on_the_client(self):
        """A full disk for an upload's temp file is the server's 500; a body processor that
        fails another way is 400, with its traceback logged (it may be a bug of yours)."""
        form = {'Content-Type': 'application/x-www-form-urlencoded'}
        process = 'cherrypy._cpreqbody.RequestBody.process'
        with mock.patch(process, side_effect=OSError(errno.ENOSPC, 'No space left on device')):
            self.assertEqual(request('POST', '/input/params', body=b'a=1', headers=form)[0], 500)
        with mock.patch(process, side_effect=TypeError('a bug')):
            self.assertEqual(request('POST', '/input/params', body=b'a=1', headers=form)[0], 400)
        logged = '\n'.join(self.errors.lines)
        self.assertIn('OSError: [Errno 28]', logged)
        self.assertIn('A request body failed to parse: 400', logged)
        self.assertIn("TypeError: a bug", logged)
        self.errors.lines.clear()  # the tracebacks expected here

    def test_a_body_cherrypy_cannot_parse_gets_400(self):
        form = 'application/x-www-form-urlencoded'
        for content_type, body in (
                (form + '; charset=bogus', b'a=1'), (form + '; charset=zip', b'a=1'),
                (form + '; charset=rot13', b'a=1'), (form + '; charset="', b'a=1'),
                ('multipart/form-data', b'--b\r\n\r\nv\r\n--b--\r\n'),
                ('multipart/form-data; boundary=', b'--b\r\n\r\nv\r\n--b--\r\n'),
                ('multipart/form-data; boundary=' + 'b' * 2000, b'--b\r\n\r\nv\r\n--b--\r\n'),
                ('multipart/form-data; boundary=b', b'--b\r\nno colon here\r\n\r\nv\r\n--b--\r\n'),
                ('multipart/form-data; boundary=b',
                 b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nv'),  # cut short
                ('multipart/form-data; boundary=b',
                 b'--b\r\nContent-Disposition: form-data; name="a"\r\n'
                 b'Content-Type: text/plain; charset=zip\r\n\r\nv\r\n--b--\r\n')):
            status = request('POST', '/input/params', body=body,
                             headers={'Content-Type': content_type})[0]
            self.assertEqual(status, 400, content_type)
        status, headers, answer = request('POST', '/test/greet', body=b'[' * 100000,
                                          headers={'Content-Type': 'application/json'})
        self.assertEqual((status, headers['Content-Type']), (400, 'application/json'))
        # What CherryPy parsed, and its own 400s, as before.
        self.assertEqual(request('POST', '/input/params', body=b'a=1&b=2',
                                 headers={'Content-Type': form})[::2], (200, b'a=1 b=2'))
        multipart = (b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nv\r\n--b--\r\n')
        self.assertEqual(request('POST', '/input/params', body=multipart, headers={
            'Content-Type': 'multipart/form-data; boundary=b'})[::2], (200, b'a=v'))
        self.assertEqual(request('POST', '/input/params', body=b'a=%ff',
                                 headers={'Content-Type': form})[0], 400)
        self.assertEqual(request('POST', '/test/greet', body=b'{"nam',
                                 headers={'Content-Type': 'application/json'})[0], 400)

    def test_a_parameter_named_self_is_dropped(self):
        for path in ('/?self=1', '/?utm_source=x&self=1', '/healthcheck?self=1', '/healthcheck/?self=1'):
            self.assertEqual(self.get(path)[0], 200, path)
        self.assertEqual(self.get('/input/params?self=1&a=2')[::2], (200, b'a=2'))
        self.assertEqual(request('POST', '/input/params?b=3', body=b'self=1&a=2', headers={
            'Content-Type': 'application/x-www-form-urlencoded'})[::2], (200, b'a=2 b=3'))

    def test_a_header_cherrypy_cannot_decode_reaches_the_handler_as_sent(self):
        for value in ('https://a/?u=?x?q?y?=', '=?zip?q?x?=', '=?bogus?q?x?=', '=?utf-8?b?abc?=',
                      'Mozilla =?utf-8?q?x?=', '=?utf-8?q?=ff?='):
            for name in ('Referer', 'X-Anything', 'Content-Type'):
                status, _, body = self.get('/input/header?name=' + name, **{name: value})
                self.assertEqual((status, body), (200, value.encode()), (name, value))
        # What CherryPy decodes, it still decodes (RFC 2047, as before).
        self.assertEqual(self.get('/input/header', Referer='=?utf-8?q?caf=C3=A9?=')[2],
                         'café'.encode())
        answer = testing.raw(b'GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: =?zip?q?x?=\r\n'
                             b'Connection: close\r\n\r\n')
        self.assertTrue(answer.startswith(b'HTTP/1.1 200 OK'), answer)
        self.assertNotIn(b'CherryPy/', answer)

    def test_cookies_cherrypy_cannot_read_are_left_out_not_a_400(self):
        for cookie, seen in (('good=1; a/b=2', 'good=1'), ('a(b=1; good=2', 'good=2'),
                             ('x=1; y=2', 'x=1 y=2'), ('=?utf-8?q?=ff?=; good=3', 'good=3'),
                             ('good=4; $Foo=5', 'good=4'), ('$Version=1; good=5', 'good=5'),
                             ('good=6; c?d=7; e=8', 'e=8 good=6'), ('v="a/b=c"', 'v=a/b=c'),
                             ('@=1', '')):
            status, headers, body = self.get('/input/cookies', Cookie=cookie)
            self.assertEqual((status, body.decode()), (200, seen), cookie)
            self.assertEqual(headers['Server'], 'CherryPy')  # not CherryPy's default page

    @unittest.skipUnless(importlib.util.find_spec('server.probes'), 'no admin listener without probes.py')
    def test_the_admin_pages_take_the_same_care(self):
        for path, headers in (('/no/such/page', {'Referer': 'https://a/?u=?x?q?y?='}),
                              ('/no/such/page', {'Cookie': 'a/b=1'}),
                              ('/no/such/page?self=1', {'Accept-Encoding': 'gzip;q=x'})):
            self.assertEqual(request('GET', path, port=ADMIN_PORT, headers=headers)[0], 404)


def project_copy(folder, prod_conf_lines=''):
    """The project's code in `folder`, with lines added to its prod.conf (those of a
    [global] section go into the file's own)."""
    for name in ('run.py', 'prod.conf'):
        shutil.copy(os.path.join(HERE, name), folder)
    for name in ('server', 'static'):
        shutil.copytree(os.path.join(HERE, name), os.path.join(folder, name),
                        ignore=shutil.ignore_patterns('__pycache__', 'tests'))
    conf = os.path.join(folder, 'prod.conf')
    with open(conf) as f:
        text = _without(f.read(), prod_conf_lines)
    if prod_conf_lines.lstrip().startswith('[global]'):
        added = prod_conf_lines.lstrip()[len('[global]\n'):]
        text = text.replace('[global]\n', '[global]\n' + added, 1)
    else:
        text += prod_conf_lines
    with open(conf, 'w') as f:
        f.write(text)
    return folder


def _without(text, added):
    """prod.conf's `text` without what `added` sets again: a user who followed the README has
    these lines already, and configparser refuses a section or an option twice."""
    def sections_and_options(lines):
        section = None
        for line in lines:
            if line.startswith('['):
                section = line.strip()
            option = line.split(':', 1)[0].strip() if ':' in line and line[:1].isalpha() else None
            yield line, section, option
    added_lines = added.lstrip().splitlines()
    again = {(section, option) for _, section, option in sections_and_options(added_lines)}
    again_sections = {section for section, _ in again if section != '[global]'}
    kept, dropping = [], False
    for line, section, option in sections_and_options(text.splitlines(keepends=True)):
        if line[:1] in (' ', '\t') and line.strip():  # a value's continuation line
            if not dropping:
                kept.append(line)
            continue
        dropping = section in again_sections or (section, option) in again and option is not None
        if not dropping:
            kept.append(line)
    return ''.join(kept)


# A setting of your own and the page that reads it, as the README shows them.
GREETING_CONF = """
[global]
ops.greeting: 'Hello'
ops.retries: 3
ops.beta: False
"""
GREETING_SERVER = """
import cherrypy, run
from server import settings
run.Landing.greeting = cherrypy.expose(lambda self: repr(
    (settings.get('ops.greeting'), settings.get('ops.retries'), settings.get('ops.beta'))))
run.main()
"""


class OwnSettingsTest(unittest.TestCase):

    def test_the_start_up_line_says_what_runs_once_a_part_is_removed(self):
        """README "Remove it": without probes.py no admin listener, without workers.py one
        process, whatever ADMIN_PORT and WORKERS say."""
        config = settings.Settings({}, False, {
            'server.socket_host': '127.0.0.1', 'server.socket_port': 8080,
            'server.thread_pool': 100, 'ops.admin_port': 8081, 'ops.workers': 4})
        with mock.patch.dict(sys.modules, {'server.probes': mock.Mock(), 'server.workers': mock.Mock()}):
            line = config.summary()
        self.assertIn('in each of 4 processes', line)
        self.assertIn('admin port: 8081', line)
        with mock.patch.dict(sys.modules):
            sys.modules.pop('server.probes', None)
            sys.modules.pop('server.workers', None)
            line = config.summary()
            self.assertEqual(config.admin_port(), 0)
        self.assertNotIn('processes', line)
        self.assertIn('admin port: off', line)

    def test_a_setting_of_yours_that_defaults_to_none_or_a_list_reads_its_variable(self):
        """A database URL defaulting to None ignored DB_URL (and a list, TAGS) silently."""
        variables = settings.user_variables({'ops.db_url': None, 'ops.tags': ['a'], 'ops.n': 1})
        values = settings.read_environment({'DB_URL': 'postgres://x', 'TAGS': 'a, b,,c'}, variables)
        self.assertEqual(values, {'DB_URL': 'postgres://x', 'TAGS': ['a', 'b', 'c']})

    def test_a_handler_reads_its_setting_and_the_environment_overrides_it(self):
        with tempfile.TemporaryDirectory() as folder:
            project_copy(folder, GREETING_CONF)
            for env, expected in (({}, "('Hello', 3, False)"),
                                  ({'GREETING': 'Hi', 'RETRIES': '5', 'BETA': 'yes'},
                                   "('Hi', 5, True)")):
                proc, port, _ = start_server(env, code=GREETING_SERVER, cwd=folder)
                try:
                    self.assertEqual(request('GET', '/greeting', port=port)[2].decode(), expected)
                finally:
                    proc.send_signal(signal.SIGTERM)
                    stop(proc)

    def test_bad_values_exit_2_naming_them_from_the_environment_and_prod_conf(self):
        cases = ((GREETING_CONF, None, {'RETRIES': 'many'}, "RETRIES='many': must be a whole number"),
                 ('', ('server.socket_port: 8080', 'server.socket_port: 70000'), {},
                  'prod.conf: server.socket_port: 70000: must be a whole number from 1 to 65535'),
                 ('', ('ops.drain_seconds: 0', "ops.drain_seconds: 'soon'"), {}, 'DRAIN_SECONDS'),
                 ('', ('ops.static_max_age: 3600', 'ops.static_max_age: -1'), {}, 'STATIC_MAX_AGE'),
                 # a setting of your own whose variable is the server's (PORT) or the system's
                 ('[global]\nops.port: 5432\n', None, {}, 'ops.port: its variable PORT is taken'),
                 ('[global]\nops.home: "x"\n', None, {}, 'ops.home: its variable HOME is taken'),
                 # a string without quotes: CherryPy's words, not a Python tuple
                 ('[global]\nops.greeting: Hello\n', None, {},
                  "prod.conf: Config error in section: 'global', option: 'ops.greeting'"),
                 ('', ('ops.workers: 1', 'ops.workers: 1\nops.workers: 2'), {},
                  "option 'ops.workers' in section 'global' already exists"))
        for added, (old, new), env, message in ((a, r or ('', ''), e, m) for a, r, e, m in cases):
            with tempfile.TemporaryDirectory() as folder:
                conf = os.path.join(project_copy(folder, added), 'prod.conf')
                with open(conf) as f:
                    text = f.read()
                with open(conf, 'w') as f:
                    f.write(text.replace(old, new, 1))
                full = dict(os.environ, HOST='127.0.0.1', ADMIN_PORT='0', **env)
                full.pop('PORT', None)  # the file's value, not the environment's
                done = subprocess.run([sys.executable, 'run.py'], cwd=folder, env=full,
                                      capture_output=True, text=True, timeout=20)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertEqual(done.stderr.count('\n'), 1, done.stderr)
            self.assertIn(message, done.stderr)


ROBOTS_CONF = """
[/robots.txt]
tools.staticfile.on: True
tools.staticfile.filename: 'static/robots.txt'
"""


class StaticSectionsTest(unittest.TestCase):
    """Cache-Control and STATIC_MAX_AGE reach every section that serves files, yours too."""

    def test_a_file_at_its_own_url_is_cached_like_the_others(self):
        with tempfile.TemporaryDirectory() as folder:
            project_copy(folder, ROBOTS_CONF)
            with open(os.path.join(folder, 'static', 'robots.txt'), 'w') as f:
                f.write('User-agent: *\n')
            for env, age in (({}, 3600), ({'STATIC_MAX_AGE': '60'}, 60)):
                proc, port, _ = start_server(env, cwd=folder)
                try:
                    for path in ('/robots.txt', '/logo.png', '/static/style.css'):
                        status, headers, _ = request('GET', path, port=port)
                        self.assertEqual((status, headers['Cache-Control']),
                                         (200, f'public, max-age={age}'), (path, env))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    stop(proc)


# A test run that fails with its server still running; it prints the server's process id.
LEAKY_TEST = """
from server import testing
proc, port, admin = testing.start_server()
print(proc.pid, flush=True)
raise SystemExit(1)
"""


class NoServerLeftBehindTest(unittest.TestCase):

    def assertGone(self, pid):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with open(f'/proc/{pid}/stat') as f:
                    if f.read().split(') ', 1)[1].startswith('Z'):
                        return  # dead, waiting for its parent to collect it
            except FileNotFoundError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        self.fail(f'server {pid} outlived its test process')

    def test_a_failed_test_run_leaves_no_server(self):
        done = subprocess.run([sys.executable, '-c', LEAKY_TEST], cwd=HERE, capture_output=True,
                              text=True, timeout=30)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertGone(int(done.stdout))

    def test_a_killed_test_run_leaves_no_server(self):
        code = LEAKY_TEST.replace('raise SystemExit(1)', 'import time; time.sleep(60)')
        runner = subprocess.Popen([sys.executable, '-c', code], cwd=HERE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            pid = int(runner.stdout.readline())
        finally:
            runner.kill()
            runner.communicate()
        self.assertGone(pid)


# The server, with CherryPy's check that the port listens (portend.occupied, which opens a
# socket) failing as when the open files limit is reached: EMFILE.
EMFILE_AT_START = """
import errno, portend, run
def no_descriptors(*args, **kwargs):
    raise OSError(errno.EMFILE, 'Too many open files')
portend.occupied = no_descriptors
run.main()
"""

# A start listener that fails, and a stop listener that never returns.
FAILED_START_HANGING_STOP = """
import time, cherrypy, run
from server import production
production.exit_if_start_fails.__defaults__ = (1.0, None)  # the grace: 1 s, not 10
def fail():
    raise RuntimeError('start fails')
cherrypy.engine.subscribe('start', fail, priority=80)
cherrypy.engine.subscribe('stop', lambda: time.sleep(600), priority=40)
run.main()
"""


# A fault cheroot takes as fatal: an error as a worker hands a kept connection back.
LISTENER_FAILS = """
import cherrypy, run
from server import production
broken, put = [], production.IdleConnections.put
def put_or_fail(self, conn):
    if broken:
        raise RuntimeError('a bug')
    put(self, conn)
production.IdleConnections.put = put_or_fail
run.Landing.breaks = cherrypy.expose(lambda self: broken.append(1) or 'broken')
run.main()
"""

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
        self.assertRegex(out, r'open files: \d+')  # raised to the hard limit at start

    def test_start_up_opens_no_socket_of_its_own_to_see_the_port_listening(self):
        """With the open files limit reached as clients arrive, CherryPy's wait() for the
        port (portend.occupied) failed with EMFILE and the engine stopped: here that check
        fails so, and the server still starts."""
        proc, port, admin = start_server(code=EMFILE_AT_START)
        try:
            self.assertEqual(request('GET', '/', port=port)[0], 200)
            if importlib.util.find_spec('server.probes'):  # the admin listener waits the same way
                self.assertEqual(request('GET', '/healthcheck', port=admin)[0], 200)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = stop(proc)
        self.assertIn('Serving on', out, err[-2000:])

    def test_a_failed_start_exits_even_if_stopping_hangs(self):
        started = time.monotonic()
        done = subprocess.run([sys.executable, '-c', FAILED_START_HANGING_STOP], cwd=HERE,
                              env=dict(os.environ, HOST='127.0.0.1', PORT=str(free_port()),
                                       ADMIN_PORT='0'),
                              capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 70, done.stderr[-2000:])
        self.assertIn('start failed and the engine did not exit', done.stderr)
        self.assertLess(time.monotonic() - started, 20)

    def test_a_listener_stopped_by_an_error_exits_70_not_0(self):
        """cheroot stops serving on such an error and the engine exits; the process exited 0,
        as after SIGTERM, and a restart-on-failure policy left the site down."""
        proc, port, _ = start_server(code=LISTENER_FAILS)
        try:
            request('GET', '/breaks', port=port)  # kept open: the hand-back fails
        except OSError:
            pass
        out, err = stop(proc)
        self.assertEqual(proc.returncode, 70, err[-2000:])
        self.assertIn("the server stopped on an error: RuntimeError('a bug')", err)

    def test_the_site_tests_pass_whatever_settings_the_environment_holds(self):
        """`DEV=1 ./run.sh`: the site's tests saw DEV=1, failed, and no server started."""
        env = dict(os.environ, DEV='1', STATIC_MAX_AGE='60', LOG_FORMAT='json', PORT='1')
        done = subprocess.run([sys.executable, 'test.py'], cwd=HERE, env=env,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])

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


if __name__ == '__main__':
    testing.main()
