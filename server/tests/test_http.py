"""Strict HTTP (server/http.py) and what the server does with hostile or slow clients:
the pure functions on bytes, then raw sockets against real servers on loopback.

    python -m unittest server.tests.test_http      # from the project folder
"""
import os
import queue
import resource
import socket
import subprocess
import sys
import threading
import time
import unittest

import mock

from server import http, production
from server.testing import HERE, free_ports, request
from server.tests.test_server import at_once, serve_in_thread

OK = b'GET / HTTP/1.1\r\nHost: x\r\n\r\n'


class CheckHeadTest(unittest.TestCase):
    """http.check_head: what cheroot would let through, refused."""

    BAD = {
        b'GET / HTTP/1.1\r\nHost : x\r\n\r\n': 'colon',
        b'GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\n': 'colon',
        b'GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n': 'obs-fold',
        b'GET / HTTP/1.1\r\n Host: x\r\n\r\n': 'obs-fold',
        b'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n': 'Control',
        b'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n': 'Control',
        b'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n': 'Control',
        b'GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n': 'Control',
        b'GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n': 'Control',
        b'GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n': 'Control',
        b'GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n': 'CRLF',
        b'GET / HTTP/1.1\r\n\r\n': 'Host',
        b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n': 'Host',
        b'GET / HTTP/1.0\r\nHost: x\r\nHost: x\r\n\r\n': 'Host',
        b'GET / HTTP/1.1\r\nHost: a b\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: 127.0.0.1:8x\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: a/b\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: user@a\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: [::1\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: a%zz\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: ::1:8x\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: ::g:80\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.1\r\nHost: [::1]:80:80\r\n\r\n': 'Malformed Host',
        b'GET / HTTP/1.0\r\nHost: a\tb\r\n\r\n': 'Malformed Host',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n': 'Content-Length',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n': 'Content-Length',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n': 'Content-Length',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0_5\r\n\r\n': 'Content-Length',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n': 'Content-Length',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n': 'Content-Length',
        b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n': 'Both',
        b'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n': '1.0',
        b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n': 'chunked',
        b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n': 'chunked',
    }

    def test_each_bad_head_gets_400_and_why(self):
        for head, why in self.BAD.items():
            status, reason = http.check_head(head) or ('accepted', '')
            self.assertEqual(status, '400 Bad Request', head)
            self.assertIn(why, reason, head)

    def test_host_is_required_only_where_asked(self):
        self.assertIsNone(http.check_head(b'GET / HTTP/1.1\r\n\r\n', require_host=False))
        self.assertIsNotNone(http.check_head(b'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n',
                                             require_host=False))

    def test_host_syntax_is_rfc_3986_uri_host_and_port(self):
        for host in (b'x', b'', b'example.com:8080', b'127.0.0.1:8080', b'[::1]:80', b'[::1]',
                     b'EXAMPLE.com.', b'a-b_c~d', b'xn--caf-dma.fr', b'a%20b', b'h:', b'[v1.x]',
                     b'::1', b'::1:32867', b'fe80::1:8080'):  # IPv6 without brackets: cheroot's tests
            self.assertIsNone(http.check_head(b'GET / HTTP/1.1\r\nHost: ' + host + b'\r\n\r\n'),
                              host)

    def test_unknown_codings_get_501(self):
        for coding in (b'foo', b'gzip, chunked', b'chunked, foo'):
            head = b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ' + coding + b'\r\n\r\n'
            self.assertEqual(http.check_head(head)[0], '501 Not Implemented', coding)

    def test_good_heads_pass(self):
        for head in (OK, b'GET / HTTP/1.0\r\n\r\n', b'GET /caf\xc3\xa9?a=1 HTTP/1.1\r\nHost: x\r\n\r\n',
                     b'POST / HTTP/1.1\r\nHOST: x\r\ncontent-length:  5 \r\nX-A: \ttab\xe9\r\n\r\n',
                     b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n'):
            self.assertIsNone(http.check_head(head), head)


class FramingTest(unittest.TestCase):

    def test_head_end_and_its_limits(self):
        self.assertEqual(http.head_end(OK + b'next', 100), len(OK))
        self.assertIsNone(http.head_end(OK[:-2], 100))
        self.assertEqual(http.head_end(b'GET / HTTP/1.1\nHost: x\n\nnext', 100), 24)  # bare LF
        with self.assertRaises(http.Reject) as raised:
            http.head_end(b'GET / HTTP/1.1\r\n' + b'X: y\r\n' * 30, 100)
        self.assertEqual(raised.exception.status, '431 Request Header Fields Too Large')
        with self.assertRaises(http.Reject) as raised:
            http.head_end(b'GET /' + b'a' * 200, 100)
        self.assertEqual(raised.exception.status, '414 Request-URI Too Long')

    def test_framing(self):
        head = b'POST / HTTP/1.1\r\nHost: x\r\n'
        self.assertEqual(http.framing(OK), (http.NONE, 0))
        self.assertEqual(http.framing(head + b'Content-Length: 12\r\n\r\n'), (http.LENGTH, 12))
        self.assertEqual(http.framing(head + b'transfer-encoding: chunked\r\n\r\n'), (http.CHUNKED, None))
        for fields in (b'Content-Length: 1\r\nContent-Length: 1\r\n', b'Content-Length: +1\r\n',
                       b'Content-Length: 1\r\nTransfer-Encoding: chunked\r\n',
                       b'Transfer-Encoding: gzip\r\n'):
            self.assertEqual(http.framing(head + fields + b'\r\n'), (http.INVALID, None), fields)
        self.assertEqual(http.framing(b'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n'),
                         (http.INVALID, None))

    def test_framing_never_raises_on_what_check_head_refuses_or_int_cannot_take(self):
        head = b'POST / HTTP/1.1\r\nHost: x\r\n'
        self.assertEqual(http.framing(head + b'Content-Length: 5\n\n'), (http.INVALID, None))
        self.assertEqual(http.framing(head + b'Content-Length: ' + b'0' * 5000 + b'7\r\n\r\n'),
                         (http.LENGTH, 7))
        kind, length = http.framing(head + b'Content-Length: ' + b'1' * 5000 + b'\r\n\r\n')
        self.assertEqual(kind, http.LENGTH)
        self.assertGreaterEqual(length, 10**18)  # over any body cap: 413
        self.assertEqual(http.framing(head + b'Content-Length: 0\r\n\r\n'), (http.LENGTH, 0))
        self.assertFalse(http.expects_continue(head + b'Expect: 100-continue\n\n'))

    def test_chunked_bodies(self):
        body = b'5;name=value;q="a b"\r\nhello\r\n10\r\n' + b'x' * 16 + b'\r\n0\r\nTrailer: t\r\n\r\n'
        self.assertEqual(http.chunked_scan(body + b'GET', 0, 0, 0), (True, len(body), 21, None))
        for cut in range(len(body)):  # arriving a byte at a time: never done early
            done, *resume = http.chunked_scan(body[:cut], 0, 0, 0)
            self.assertFalse(done, cut)
            self.assertEqual(http.chunked_scan(body, *resume[:2], 0, resume[2]),
                             (True, len(body), 21, None))

    def test_trailers_are_parsed_once_as_they_arrive(self):
        """Each call resumes after the last whole trailer line: 1 MiB of trailers, all parsed
        again as each few bytes came, kept a core busy."""
        body = b'5\r\nhello\r\n0\r\nA: 1\r\nB: 2\r\nC'
        done, pos, total, trailers = http.chunked_scan(body, 0, 0, 0)
        self.assertEqual((done, pos, total, trailers), (False, body.index(b'C'), 5, body.index(b'A')))
        body += b': 3\r\n\r\n'
        self.assertEqual(http.chunked_scan(body, pos, total, 0, trailers), (True, len(body), 5, None))

    def test_trailers_over_the_header_cap_are_431(self):
        trailers = b'0\r\n' + b'a: b\r\n' * 300
        for body in (trailers + b'\r\n', trailers):  # whole, or still arriving
            with self.assertRaises(http.Reject, msg=body[-20:]) as raised:
                http.chunked_scan(body, 0, 0, 0, trailer_limit=1000)
            self.assertEqual(raised.exception.status, '431 Request Header Fields Too Large')
        self.assertTrue(http.chunked_scan(trailers + b'\r\n', 0, 0, 0, trailer_limit=2000)[0])

    def test_malformed_chunks_are_400(self):
        for body in (b'-1\r\n', b'0x5\r\nhello\r\n0\r\n\r\n', b'0_5\r\n', b'5\nhello\r\n0\r\n\r\n',
                     b'5\r\nhello0\r\n\r\n', b'5\r\nhelloXY0\r\n\r\n', b'1' + b'0' * 16 + b'\r\n',
                     b' 5\r\nhello\r\n', b'5;GET /smuggled HTTP/1.1\r\nhello\r\n',
                     b'0\r\nBad trailer\r\n\r\n', b'0\r\n\n', b'5' + b';' * 5000):
            with self.assertRaises(http.Reject, msg=body) as raised:
                http.chunked_scan(body, 0, 0, 0)
            self.assertEqual(raised.exception.status, '400 Bad Request', body)

    def test_a_chunked_body_over_the_cap_is_413(self):
        with self.assertRaises(http.Reject) as raised:
            http.chunked_scan(b'8\r\n12345678\r\n8\r\n', 0, 0, 10)
        self.assertEqual(raised.exception.status, '413 Request Entity Too Large')


def echo_app(environ, start_response):
    """Answers with the method, path and request body, read or not (X-Read: no)."""
    body = b''
    if environ.get('HTTP_X_READ') != 'no':
        body = environ['wsgi.input'].read()
    if environ['PATH_INFO'] == '/slow':
        time.sleep(0.5)
    answer = b'%s %s %s' % (environ['REQUEST_METHOD'].encode(), environ['PATH_INFO'].encode(), body)
    start_response('200 OK', [('Content-Length', str(len(answer)))])
    return [answer]


def exchange(address, data, timeout=5, half_close=False):
    """Send data on a new connection; everything the server sends until it closes.
    half_close: then end the sending side, as a client that has nothing more to send."""
    with socket.create_connection(address, timeout=timeout) as client:
        client.sendall(data)
        if half_close:
            client.shutdown(socket.SHUT_WR)
        received = b''
        while True:
            try:
                chunk = client.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        return received


class WorkerErrorsTest(unittest.TestCase):
    """A connection that fails while a worker reads its request gets cheroot's own handling
    (cheroot's suite, test_broken_connection_during_http_communication_fallback)."""

    def test_a_connection_error_while_parsing_is_cheroots_500_not_our_400(self):
        def reset(request):
            raise ConnectionResetError(666)

        server = serve_in_thread(echo_app, timeout=2, threads=2)
        logged = []
        server.error_log = lambda msg='', level=20, traceback=False: logged.append(msg)
        try:
            with mock.patch.object(production._Request, 'read_request_line', reset):
                answer = exchange(server.bind_addr, OK)
            self.assertTrue(answer.startswith(b'HTTP/1.1 500'), answer)
            self.assertIn('socket.error 666', logged)
            answer = exchange(server.bind_addr, OK[:-2] + b'Connection: close\r\n\r\n')
            self.assertIn(b' 200 OK', answer)  # the worker lives on
        finally:
            server.stop()

    def test_a_bug_reading_requests_costs_one_client_a_400_not_the_server(self):
        server = serve_in_thread(echo_app, timeout=2, threads=2)
        logged = []
        server.client_errors.log = lambda msg='', level=20, traceback=False: logged.append(msg)
        try:
            with mock.patch.object(http, 'framing', side_effect=RuntimeError('a bug')):
                answer = exchange(server.bind_addr, OK)
                self.assertTrue(answer.startswith(b'HTTP/1.1 400'), answer)
                self.assertNotIn(b'a bug', answer)
            self.assertIn('Unexpected error reading a request', logged)
            manager = server._connections
            with mock.patch.object(manager, '_put', side_effect=RuntimeError('a bug')):
                answer = exchange(server.bind_addr, OK + OK, timeout=2)  # kept, then put() fails
            self.assertTrue(answer.startswith(b'HTTP/1.1 200 OK'), answer)
            self.assertIn('Unexpected error keeping a connection', logged)
            answer = exchange(server.bind_addr, OK[:-2] + b'Connection: close\r\n\r\n')
            self.assertIn(b' 200 OK', answer)  # the server lives on
        finally:
            server.stop()

    def test_the_writer_and_reader_take_patches_on_the_instance(self):
        for stream in (production._SocketWriter(None), production._RequestReader(b'')):
            for name in ('write', 'close'):
                setattr(stream, name, print)  # cheroot's suite monkeypatches them


class RawSocketTest(unittest.TestCase):
    """What a real server (production.AdminServer, the main one's machinery) answers."""

    @classmethod
    def setUpClass(cls):
        cls.server = serve_in_thread(echo_app, timeout=1, threads=2)
        cls.server.tune(60, 100, {'X-Frame-Options': 'DENY'})
        cls.server.max_request_body_size = 1000
        cls.server.max_request_header_size = 2000
        cls.address = cls.server.bind_addr

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def assertRefused(self, data, status):
        """The answer is `status`, bare, and the connection is closed after it."""
        answer = exchange(self.address, data)
        self.assertTrue(answer.startswith(b'HTTP/1.1 ' + status), (data, answer))
        self.assertNotIn(b' 200 OK', answer)  # the request after it: never read, closed
        self.assertNotIn(b'Traceback', answer)
        self.assertNotIn(b'CherryPy/', answer)
        self.assertNotIn(b'Cheroot/', answer)

    def test_every_bad_head_gets_400_and_the_connection_closes(self):
        for head in CheckHeadTest.BAD:  # cheroot's own 501 for "chunked, gzip" stands
            self.assertRefused(head + OK, b'501' if b'gzip' in head else b'400')

    def test_cheroots_own_refusals_carry_the_request_id_and_site_headers(self):
        """A malformed request line, 505, 501, a request-target cheroot refuses: each answered
        as the server's other refusals, its id named in the log."""
        cases = {b'GET /\r\n': b'400', b'GET / HTTP/2.5\r\nHost: x\r\n': b'505',
                 b'GET x HTTP/1.1\r\nHost: x\r\n': b'400',
                 b'GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n': b'501'}
        for number, (head, status) in enumerate(cases.items()):
            request_id = b'probe-%d' % number
            lines = []
            with mock.patch.object(self.server.client_errors, 'log',
                                   lambda message, **kw: lines.append(message)), \
                    mock.patch.object(self.server.client_errors, '_seen', {}):
                answer = exchange(self.address, head + b'X-Request-Id: ' + request_id + b'\r\n\r\n'
                                  + OK)
            self.assertTrue(answer.startswith(b'HTTP/1.1 ' + status), answer)
            answer_head = answer.split(b'\r\n\r\n', 1)[0]
            self.assertIn(b'\r\nX-Request-Id: ' + request_id, answer_head)
            self.assertIn(b'\r\nConnection: close', answer_head)
            self.assertIn(b'\r\nX-Frame-Options: DENY', answer_head)
            self.assertNotIn(b' 200 OK', answer)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(status.decode(), lines[0])
            self.assertIn('request_id=' + request_id.decode(), lines[0])

    def test_a_malformed_host_gets_400_and_the_connection_closes(self):
        for host in (b'a b', b'127.0.0.1:8x'):
            self.assertRefused(b'GET / HTTP/1.1\r\nHost: ' + host + b'\r\n\r\n' + OK, b'400')
        self.assertIn(b' 200 OK', exchange(
            self.address, b'GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: close\r\n\r\n'))

    def test_connect_gets_405_and_an_absolute_uri_400_as_from_stock_cheroot(self):
        """The admin listener is a plain cheroot server, not in CherryPy's proxy mode."""
        answer = exchange(self.address, b'CONNECT /anything HTTP/1.1\r\nHost: x\r\n\r\n')
        self.assertTrue(answer.startswith(b'HTTP/1.1 405'), answer)
        answer = exchange(self.address, b'GET http://google.com/ HTTP/1.1\r\nHost: x\r\n\r\n')
        self.assertTrue(answer.startswith(b'HTTP/1.1 400'), answer)

    def test_what_cheroot_fails_on_gets_400_not_500(self):
        self.assertRefused(b'GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n', b'400')

    def test_an_unknown_transfer_coding_gets_501(self):
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo\r\n\r\n' + OK,
                           b'501')

    def test_malformed_chunked_bodies_get_400(self):
        head = b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
        for body in (b'-1\r\n', b'0x5\r\nhello\r\n0\r\n\r\n', b'0_5\r\n\r\n', b'5\nhello\r\n0\r\n\r\n',
                     b'10000000000000000\r\n', b'5\r\nhelloXX0\r\n\r\n'):
            self.assertRefused(head + body + OK, b'400')

    def test_oversized_headers_get_431_and_bodies_413(self):
        self.assertRefused(b'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'b' * 3000 + b'\r\n\r\n', b'431')
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n', b'413')
        chunks = b'200\r\n' + b'x' * 512 + b'\r\n'
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
                           + chunks * 3, b'413')
        trailers = b'0\r\n' + b'X-T: t\r\n' * 300  # 2,400 bytes of trailer fields, cap 2,000
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
                           + trailers + b'\r\n' + OK, b'431')

    def test_heads_python_cannot_parse_are_refused_and_the_server_lives(self):
        """A last field ended by a bare LF, and a Content-Length int() refuses (over 4,300
        digits), each raised in the selector thread; pipelined behind a request, in the
        worker's hand-back, which cheroot takes as fatal: the server stopped."""
        started = time.monotonic()
        self.assertRefused(b'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\n\n', b'400')
        self.assertLess(time.monotonic() - started, 0.9)  # not the 408 at socket_timeout
        huge = b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ' + b'1' * 5000 + b'\r\n\r\n'
        self.server.max_request_header_size = 8000
        self.addCleanup(setattr, self.server, 'max_request_header_size', 2000)
        answer = exchange(self.address, huge)
        self.assertTrue(answer.startswith(b'HTTP/1.1 413'), answer)
        answer = exchange(self.address, OK + huge)
        self.assertTrue(answer.startswith(b'HTTP/1.1 200 OK'), answer)
        self.assertIn(b'HTTP/1.1 413', answer)
        answer = exchange(self.address, OK[:-2] + b'Connection: close\r\n\r\n')
        self.assertTrue(answer.startswith(b'HTTP/1.1 200 OK'), answer)

    def test_empty_lines_before_a_request_may_arrive_split(self):
        with socket.create_connection(self.address, timeout=5) as client:
            client.sendall(b'\r\n\r')  # a CR, its LF in the next packet
            time.sleep(0.1)
            client.sendall(b'\n' + OK[:-2] + b'Connection: close\r\n\r\n')
            answer = b''.join(iter(lambda: client.recv(65536), b''))
        self.assertTrue(answer.startswith(b'HTTP/1.1 200 OK'), answer)

    def test_a_body_in_small_pieces_arrives_whole(self):
        body = bytes(range(256)) * 3
        with socket.create_connection(self.address, timeout=5) as client:
            client.sendall(b'POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n' % len(body))
            for at in range(0, len(body), 100):
                client.sendall(body[at:at + 100])
                time.sleep(0.005)
            client.sendall(OK[:-2] + b'Connection: close\r\n\r\n')
            answer = b''.join(iter(lambda: client.recv(65536), b''))
        self.assertIn(b'POST /p ' + body, answer)
        self.assertTrue(answer.endswith(b'GET / '), answer)

    def test_a_refusal_is_bare_with_the_site_headers(self):
        answer = exchange(self.address, b'GET / HTTP/1.1\r\n\r\n')
        head, _, body = answer.partition(b'\r\n\r\n')
        self.assertIn(b'Connection: close', head)
        self.assertIn(b'X-Frame-Options: DENY', head)
        self.assertEqual(body, b'HTTP/1.1 requires a Host header.')

    def test_a_body_the_handler_did_not_read_is_never_a_request(self):
        """Smuggling: the next request on the connection is the one after the body."""
        smuggled = b'GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
        chunked = (b'POST /first HTTP/1.1\r\nHost: x\r\nX-Read: no\r\nTransfer-Encoding: chunked\r\n\r\n'
                   + b'%x\r\n' % len(smuggled) + smuggled + b'\r\n0\r\n\r\n')
        sized = (b'POST /first HTTP/1.1\r\nHost: x\r\nX-Read: no\r\nContent-Length: %d\r\n\r\n'
                 % len(smuggled) + smuggled)
        for first in (chunked, sized):
            answer = exchange(self.address, first + b'GET /next HTTP/1.1\r\nHost: x\r\n'
                              b'Connection: close\r\n\r\n')
            self.assertEqual(answer.count(b'HTTP/1.1 200 OK'), 2, answer)
            self.assertIn(b'GET /next', answer)
            self.assertNotIn(b'/smuggled', answer.replace(b'POST /first', b''), answer)

    def test_bodies_arrive_whole(self):
        answer = exchange(self.address, b'POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n'
                          b'Connection: close\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n')
        self.assertTrue(answer.endswith(b'POST /c abcde'), answer)
        answer = exchange(self.address, b'\r\n\r\nPOST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n'
                          b'Connection: close\r\n\r\nxyz')  # empty lines before a request: ignored
        self.assertTrue(answer.endswith(b'POST /l xyz'), answer)

    def test_expect_100_continue_is_answered_once(self):
        with socket.create_connection(self.address, timeout=5) as client:
            client.sendall(b'POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n'
                           b'Expect: 100-continue\r\nConnection: close\r\n\r\n')
            self.assertEqual(client.recv(100), b'HTTP/1.1 100 Continue\r\n\r\n')
            client.sendall(b'abc')
            answer = b''
            while chunk := client.recv(4096):
                answer += chunk
        self.assertTrue(answer.startswith(b'HTTP/1.1 200 OK'), answer)
        self.assertTrue(answer.endswith(b'POST /e abc'), answer)

    def test_expect_100_continue_is_not_answered_for_a_head_that_is_refused(self):
        """The client would send a body only to have it thrown away: it gets the 400 at once."""
        for head in (b'POST /e HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n',
                     b'POST /e HTTP/1.1\r\nHost: x\r\nX-A: a\x01\r\nContent-Length: 3\r\n'
                     b'Expect: 100-continue\r\n\r\n'):
            with socket.create_connection(self.address, timeout=5) as client:
                client.sendall(head)
                answer = client.recv(4096)
            self.assertTrue(answer.startswith(b'HTTP/1.1 400 Bad Request'), answer)

    def test_half_a_body_then_the_end_is_400_never_served_as_whole(self):
        for request_ in (b'POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc',
                         b'POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n'
                         b'3\r\nabc\r\n0\r\nX-T: 1\r\n'):
            answer = exchange(self.address, request_, half_close=True)
            self.assertTrue(answer.startswith(b'HTTP/1.1 400 Bad Request'), answer)
            self.assertTrue(answer.endswith(b'The request body was cut short.'), answer)

    def test_half_a_head_then_the_end_is_answered_by_cheroot(self):
        with socket.create_connection(self.address, timeout=5) as client:
            client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n')
            client.shutdown(socket.SHUT_WR)
            answer = client.recv(4096)
        self.assertTrue(answer.startswith(b'HTTP/1.1 400 '), answer)

    def test_a_silent_connection_gets_408_at_socket_timeout(self):
        started = time.monotonic()
        answer = exchange(self.address, b'')
        self.assertTrue(answer.startswith(b'HTTP/1.1 408 '), answer)
        self.assertLess(time.monotonic() - started, 3)  # socket_timeout 1 s, checked every 0.5 s
        answer = exchange(self.address, b'GET / HTTP/1.1\r\nHost: x\r\n')  # half a head
        self.assertTrue(answer.startswith(b'HTTP/1.1 408 '), answer)
        answer = exchange(self.address, b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\nab')
        self.assertTrue(answer.startswith(b'HTTP/1.1 408 '), answer)

    def test_slow_clients_do_not_hold_the_workers(self):
        """Slowloris and slow bodies, ten times the workers: a fresh request still runs."""
        slow = []
        try:
            for i in range(20):
                client = socket.create_connection(self.address)
                slow.append(client)
                client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nX-A: ' if i % 2 else
                               b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab')
            time.sleep(0.2)
            for _ in range(3):
                started = time.monotonic()
                answer = exchange(self.address, b'GET /fresh HTTP/1.1\r\nHost: x\r\n'
                                  b'Connection: close\r\n\r\n')
                self.assertTrue(answer.endswith(b'GET /fresh '), answer)
                self.assertLess(time.monotonic() - started, 0.5)
        finally:
            for client in slow:
                client.close()

    def test_repeated_client_errors_are_logged_once_per_interval(self):
        lines = []
        with mock.patch.object(self.server.client_errors, 'log',
                               lambda message, **kw: lines.append(message)), \
                mock.patch.object(self.server.client_errors, '_seen', {}):
            for _ in range(5):
                exchange(self.address, b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n')
            self.server.client_errors.INTERVAL = 0
            try:
                exchange(self.address, b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n')
            finally:
                del self.server.client_errors.INTERVAL
        self.assertEqual(len(lines), 2, lines)
        self.assertIn('More than one Host', lines[0])
        self.assertIn('(4 more like it', lines[1])


def answering_after(wait):
    """A WSGI app that answers 200 "ok" once wait() returns."""
    def app(environ, start_response):
        wait()
        start_response('200 OK', [('Content-Length', '2')])
        return [b'ok']
    return app


class QueueLimitTest(unittest.TestCase):
    """server.accepted_queue_size and accepted_queue_timeout mean what they mean on stock: a
    request finds a place if a thread is free or fewer than the size wait; else it waits up
    to the timeout for one, then gets 503."""

    def queue(self, threads, size):
        pool = production.PacedQueue(threads, maxsize=size)
        self.addCleanup(pool.close)
        refused = []
        pool.refuse = refused.append
        return pool, refused

    def test_past_the_size_a_request_is_refused_at_once_without_a_timeout(self):
        pool, _ = self.queue(1, 2)
        pool.put('a')
        pool.put('b')
        with self.assertRaises(queue.Full):  # cheroot answers 503
            pool.put('c', timeout=0)
        with self.assertRaises(queue.Full):
            pool.put('c', block=False)
        pool.put(production._STOP_WORKER)  # a stop is never refused

    def test_past_the_size_a_request_waits_up_to_the_timeout_then_is_refused(self):
        pool, refused = self.queue(1, 1)
        pool.put('a')
        started = time.monotonic()
        pool.put('b', timeout=0.2)  # returns at once: the looking thread does not wait
        self.assertLess(time.monotonic() - started, 0.1)
        self.assertEqual(pool.qsize(), 2)
        deadline = time.monotonic() + 5
        while not refused and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(refused, ['b'])
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        self.assertEqual(pool.qsize(), 1)

    def test_one_refusal_failing_never_leaves_the_others_waiting(self):
        pool, refused = self.queue(1, 1)
        first, second = mock.Mock(), mock.Mock()
        pool.refuse = lambda conn: refused.append(conn) if conn is second else 1 / 0
        logged = mock.patch('cherrypy.log').start()  # the failure's traceback
        self.addCleanup(mock.patch.stopall)
        pool.put('a')
        pool.put(first, timeout=0.05)
        pool.put(second, timeout=0.05)
        deadline = time.monotonic() + 5
        while not refused and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(refused, [second])
        first.close.assert_called_once()  # its refusal failed: closed all the same
        self.assertEqual(logged.call_count, 1)
        self.assertEqual(pool.qsize(), 1)

    def test_a_waiting_request_takes_a_place_that_frees_up_in_time(self):
        pool, refused = self.queue(1, 1)
        pool.put('a')
        pool.put('b', timeout=5)
        taken = []
        worker = threading.Thread(target=lambda: taken.extend([pool.get(), pool.get()]))
        worker.start()
        worker.join(5)
        self.assertEqual(taken, ['a', 'b'])
        self.assertEqual(refused, [])

    def test_sleeping_threads_count_as_free_places(self):
        """The queue runs requests on as few threads as keep up; the others sleep. On stock
        they would each have taken a request: a burst of threads + size requests fits."""
        pool, refused = self.queue(3, 1)
        taken = []
        sleepers = [threading.Thread(target=lambda: taken.append(pool.get())) for _ in range(3)]
        for thread in sleepers:
            thread.start()
        deadline = time.monotonic() + 5
        while len(pool._idle) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        pool.active = 0  # no thread may start: all four wait in the queue
        for item in 'abcd':
            pool.put(item, timeout=0)  # no queue.Full: 3 sleeping threads and 1 place
        with self.assertRaises(queue.Full):
            pool.put('e', timeout=0)
        pool.active = 3
        with pool._lock:
            pool._hand_out()
        for thread in sleepers:
            thread.join(5)
        self.assertEqual(sorted(taken), ['a', 'b', 'c'])

    def test_a_stop_serves_the_requests_still_waiting_for_a_place(self):
        pool, refused = self.queue(1, 1)
        pool.put('a')
        pool.put('b', timeout=5)
        pool.put(production._STOP_WORKER)
        self.assertEqual([pool._items.popleft() for _ in range(3)],
                         ['a', 'b', production._STOP_WORKER])
        self.assertEqual(refused, [])

    def test_a_burst_past_the_size_is_served_as_on_stock(self):
        """CherryPy's test_refleaks ran after test_conn left accepted_queue_size 5 set: 25
        clients at once on 10 threads, and up to 6 got 503 (stock: none)."""
        server = serve_in_thread(answering_after(lambda: time.sleep(0.02)), threads=10,
                                 accepted_queue_size=5, accepted_queue_timeout=10)
        self.addCleanup(server.stop)
        statuses = []

        def client():
            answer = exchange(server.bind_addr, b'GET / HTTP/1.1\r\nHost: x\r\n'
                              b'Connection: close\r\n\r\n')
            statuses.append(answer.split(b' ', 2)[1])
        at_once(25, client, timeout=20)
        self.assertEqual(statuses, [b'200'] * 25)

    def test_a_request_that_found_no_place_in_time_gets_503(self):
        release = threading.Event()

        server = serve_in_thread(answering_after(lambda: release.wait(10)), threads=1,
                                 accepted_queue_size=1, accepted_queue_timeout=0.3)
        self.addCleanup(server.stop)
        self.addCleanup(release.set)
        head = b'GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: late-one\r\nConnection: close\r\n\r\n'
        busy = [socket.create_connection(server.bind_addr) for _ in range(2)]  # running, queued
        for sock in busy:
            self.addCleanup(sock.close)
            sock.sendall(b'GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
            time.sleep(0.2)
        started = time.monotonic()
        answer = exchange(server.bind_addr, head)
        self.assertGreaterEqual(time.monotonic() - started, 0.25)
        self.assertTrue(answer.startswith(b'HTTP/1.1 503 '), answer)
        self.assertIn(b'X-Request-Id: late-one', answer)
        release.set()
        for sock in busy:
            sock.settimeout(5)
            self.assertTrue(sock.recv(100).startswith(b'HTTP/1.1 200 '))


class OpenFilesTest(unittest.TestCase):

    def test_the_soft_limit_is_raised_to_the_hard_one(self):
        limits = [(1024, 4096)]
        with mock.patch.object(resource, 'getrlimit', lambda _: limits[-1]), \
                mock.patch.object(resource, 'setrlimit', lambda _, value: limits.append(value)):
            self.assertEqual(production.raise_open_files_limit(), (1024, 4096))
            self.assertEqual(limits[-1], (4096, 4096))
            with mock.patch.object(production, '_open_files', (1024, 4096)):
                self.assertEqual(production.startup_note(), 'open files: 4096 (raised from 1024)')

    def test_out_of_descriptors_it_pauses_accepting_and_keeps_serving(self):
        """A hard limit of 100 open files and 300 connections: the process stays up, logs
        a few lines, and answers once the connections are gone."""
        code = ('import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100));'
                'sys.argv = ["run.py"]; runpy.run_path("run.py", run_name="__main__")')
        port, admin = free_ports(2)
        env = dict(os.environ, HOST='127.0.0.1', PORT=str(port), ADMIN_PORT=str(admin))
        proc = subprocess.Popen([sys.executable, '-c', code], cwd=HERE, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        clients = []
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    if request('GET', '/healthcheck', port=port, timeout=1)[0] == 200:
                        break
                except OSError:
                    time.sleep(0.1)
            for _ in range(300):
                try:
                    clients.append(socket.create_connection(('127.0.0.1', port), timeout=1))
                except OSError:
                    break
            time.sleep(1.5)
            self.assertIsNone(proc.poll(), 'the server exited')
            for client in clients:
                client.close()
            clients = []
            started = time.monotonic()
            status = None
            while status != 200 and time.monotonic() - started < 5:
                try:
                    status = request('GET', '/', port=port, timeout=1)[0]
                except OSError:
                    time.sleep(0.1)
            self.assertEqual(status, 200)
        finally:
            for client in clients:
                client.close()
            proc.terminate()
            output = proc.communicate(timeout=20)[0]
        self.assertLess(len(output.splitlines()), 40, output)
        self.assertIn('not accepting', output)
        self.assertNotIn('Traceback', output)


class UpstreamTest(unittest.TestCase):

    def test_every_private_name_we_rely_on_still_exists(self):
        """production.UPSTREAM lists them; a cheroot or CherryPy upgrade that drops one fails here."""
        self.assertTrue(all(production.UPSTREAM.values()))
        self.assertEqual(production.check_upstream(production.UPSTREAM), [])

    def test_a_name_that_is_gone_is_reported(self):
        self.assertEqual(production.check_upstream(
            ['cheroot.server.HTTPServer._gone', 'cheroot.server.HTTPServer()._gone',
             'cheroot.no_such_module.X', 'cheroot.server.HTTPServer.serve']),
            ['cheroot.server.HTTPServer._gone', 'cheroot.server.HTTPServer()._gone',
             'cheroot.no_such_module.X'])


class SlowReaderTest(unittest.TestCase):

    def test_a_slow_reader_holds_a_worker_for_a_bounded_time(self):
        """Each piece is taken within socket_timeout, but the whole answer goes at 40 KB/s:
        the worker gives up once the answer's budget (socket_timeout + size / SEND_RATE)
        is spent, instead of serving the client for minutes."""
        piece = b'x' * 16384

        def app(environ, start_response):
            start_response('200 OK', [('Content-Length', str(len(piece) * 1024))])
            return (piece for _ in range(1024))  # 16 MiB

        done = threading.Event()
        communicate = production.TunedConnection.communicate

        def timed(conn):
            try:
                return communicate(conn)
            finally:
                done.set()

        with mock.patch.object(production.TunedConnection, 'communicate', timed), \
                mock.patch.object(production._SocketWriter, "SEND_RATE", 2**20):
            server = serve_in_thread(app, timeout=1)
            self.addCleanup(server.stop)
            with socket.create_connection(server.bind_addr) as client:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.sendall(b'GET / HTTP/1.1\r\nHost: x\r\n\r\n')
                client.settimeout(0.5)
                started = time.monotonic()
                while not done.is_set() and time.monotonic() - started < 20:
                    try:
                        client.recv(2048)
                    except OSError:
                        pass
                    time.sleep(0.05)
        self.assertTrue(done.is_set())
        self.assertLess(time.monotonic() - started, 15)  # without the budget: about 400 s


if __name__ == '__main__':
    unittest.main()
