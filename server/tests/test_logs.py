"""Tests of request ids and JSON logs (server/logs.py): a real server on free loopback ports,
started in this process; one test runs `python run.py` with LOG_FORMAT=json."""
import importlib.util
import io
import json
import re
import signal
import unittest

import cherrypy
import mock

from server import logs, production, settings, testing
from server.testing import CaptureLog, flush_access_log, raw, request, start_server, stop
from server.tests.test_server import serve_in_thread

PORT, ADMIN_PORT = testing.PORT, testing.ADMIN_PORT
FRESH = re.compile(r'[0-9a-f]{32}')  # an id the server made
ISO_UTC = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z')


class Handlers:
    """Test-only handlers under /logtest."""

    @cherrypy.expose
    def echo(self, **params):
        return 'echo\n'

    @cherrypy.expose
    def my_id(self):  # what a handler passes on to an upstream call
        return cherrypy.request.request_id

    @cherrypy.expose
    def say(self):
        cherrypy.log('hello from a handler', 'APP')
        return 'said\n'

    @cherrypy.expose
    def boom(self):
        raise RuntimeError('boom in a handler')


def setUpModule():
    testing.shared_site(mount={'/logtest': Handlers()})


def get(path, headers=None, port=None):
    return request('GET', path, headers=headers, port=port)


class JsonTest(unittest.TestCase):
    """LOG_FORMAT=json, switched on for the running server."""

    def setUp(self):
        logs.use_format('json')
        self.addCleanup(logs.use_format, 'combined')

    def access_lines(self, *requests):
        flush_access_log()  # lines queued before the switch
        with CaptureLog('cherrypy.access') as log:
            answers = [get(path, headers) for path, headers in requests]
            flush_access_log()
        return [json.loads(line) for line in log.lines], answers

    def test_access_line_is_one_json_object_with_every_field(self):
        agent = 'tester "quoted" \\ caf\xe9'  # control characters get 400 (test_http.py)
        (line,), [(status, headers, body)] = self.access_lines(
            ('/logtest/echo?q=1', {'User-Agent': agent, 'X-Request-ID': 'abc-123'}))
        self.assertRegex(line.pop('time'), ISO_UTC)
        self.assertGreaterEqual(line.pop('duration_ms'), 0)
        self.assertEqual(line, {
            'level': 'INFO', 'log': 'access', 'method': 'GET', 'path': '/logtest/echo?q=1',
            'status': 200, 'bytes': len(body), 'client': '127.0.0.1', 'user_agent': agent,
            'referer': None, 'request_id': 'abc-123'})

    def test_probes_stay_out(self):
        lines, _ = self.access_lines(('/healthcheck', None), ('/healthcheck/live', None),
                                     ('/logtest/echo', None))
        self.assertEqual([line['path'] for line in lines], ['/logtest/echo'])

    def test_a_500_logs_its_traceback_as_one_field_with_the_request_id(self):
        with CaptureLog('cherrypy.error') as log:
            status, headers, _ = get('/logtest/boom')
        self.assertEqual(status, 500)
        records = [json.loads(line) for line in log.lines]  # a raw traceback line would fail
        (error,) = [r for r in records if 'traceback' in r]
        self.assertEqual(error['level'], 'ERROR')
        self.assertEqual(error['message'], 'RuntimeError: boom in a handler')
        self.assertIn('Traceback (most recent call last):\n', error['traceback'])
        self.assertEqual(error['request_id'], headers['X-Request-ID'])
        self.assertEqual((error['method'], error['path']), ('GET', '/logtest/boom'))

    def test_cherrypy_log_in_a_handler_names_the_request(self):
        with CaptureLog('cherrypy.error') as log:
            _, headers, _ = get('/logtest/say')
            cherrypy.log.error('outside any request', 'TEST')
        said, outside = [json.loads(line) for line in log.lines]
        self.assertEqual((said['message'], said['context'], said['level']),
                         ('hello from a handler', 'APP', 'INFO'))
        self.assertEqual(said['request_id'], headers['X-Request-ID'])
        self.assertEqual(outside['message'], 'outside any request')
        self.assertNotIn('request_id', outside)

    def test_a_bad_id_is_never_logged(self):
        evil = 'evil"id\\with'
        with CaptureLog('cherrypy.access') as access, CaptureLog('cherrypy.error') as errors:
            _, headers, _ = get('/logtest/boom', {'X-Request-ID': evil})
            flush_access_log()
        self.assertRegex(headers['X-Request-ID'], FRESH)
        for line in access.lines + errors.lines:
            self.assertNotIn('evil', line)


class RequestIdTest(unittest.TestCase):

    def test_a_valid_id_is_kept_and_echoed(self):
        for given in ('abc-123', 'a' * 128, 'Root=1-67891233-abcdef012345678912345678;Sampled=1'):
            status, headers, body = get('/logtest/my_id', {'X-Request-ID': given})
            self.assertEqual((headers['X-Request-ID'], body.decode()), (given, given))

    def test_the_albs_trace_id_when_there_is_no_request_id(self):
        trace = 'Root=1-67891233-abcdef012345678912345678'
        self.assertEqual(get('/logtest/my_id', {'X-Amzn-Trace-Id': trace})[1]['X-Request-ID'], trace)
        both = {'X-Request-ID': 'mine', 'X-Amzn-Trace-Id': trace}
        self.assertEqual(get('/logtest/my_id', both)[1]['X-Request-ID'], 'mine')

    def test_a_fresh_id_without_one(self):
        first, second = (get('/logtest/my_id') for _ in range(2))
        for _, headers, body in (first, second):
            self.assertRegex(headers['X-Request-ID'], FRESH)
            self.assertEqual(body.decode(), headers['X-Request-ID'])
        self.assertNotEqual(first[2], second[2])

    def test_bad_ids_are_replaced(self):
        for bad in ('a' * 129, 'two words', 'quote"d', 'caf\xe9', 'tab\there', ''):
            headers = get('/logtest/my_id', {'X-Request-ID': bad})[1]
            self.assertRegex(headers['X-Request-ID'], FRESH, repr(bad))

    def test_no_control_character_gets_through(self):
        # The server refuses them before any handler or log line (server/http.py): a folded
        # header, a bare CR, a NUL.
        for value in (b'a\r\n b', b'a\rb', b'a\x00b'):
            answer = raw(b'GET /logtest/my_id HTTP/1.1\r\nHost: x\r\nX-Request-ID: ' + value +
                         b'\r\nConnection: close\r\n\r\n', port=PORT)
            self.assertTrue(answer.startswith(b'HTTP/1.1 400 '), answer)
            self.assertNotIn(value, answer)

    def test_errors_answer_with_the_id_too(self):
        for path, code in (('/no/such/page', 404), ('/logtest/boom', 500)):
            status, headers, _ = get(path, {'X-Request-ID': f'id-{code}'})
            self.assertEqual((status, headers['X-Request-ID']), (code, f'id-{code}'))
        status, headers, _ = request('POST', '/', headers={'X-Request-ID': 'id-405'})
        self.assertEqual((status, headers['X-Request-ID']), (405, 'id-405'))

    @unittest.skipUnless(importlib.util.find_spec('server.probes'), 'no admin listener without probes.py')
    def test_admin_pages_have_ids(self):
        status, headers, _ = get('/no/such/page', {'X-Request-ID': 'admin-1'}, port=ADMIN_PORT)
        self.assertEqual((status, headers['X-Request-ID']), (404, 'admin-1'))

    def test_the_error_log_line_of_a_failing_request_names_it(self):
        with CaptureLog('cherrypy.error') as log:
            get('/logtest/boom', {'X-Request-ID': 'failing-1'})
        first = next(i for i, line in enumerate(log.lines) if 'request_id=failing-1' in line)
        self.assertRegex(log.lines[first], r'^\[.+\] HTTP request_id=failing-1 ')
        self.assertIn('RuntimeError: boom in a handler', log.lines[first:])


def refused(data, port=PORT):
    """The head of the server's answer to `data`, as {name: value} with the status line
    under None, and the client-errors lines logged meanwhile (each kind logged afresh)."""
    with mock.patch.object(cherrypy.server.httpserver.client_errors, '_seen', {}), \
            CaptureLog('cherrypy.error') as log:
        answer = raw(data, port=port)
    head = answer.partition(b'\r\n\r\n')[0].decode('latin-1').split('\r\n')
    return dict([(None, head[0])] + [line.split(': ', 1) for line in head[1:]]), log.lines


class RefusedRequestIdTest(unittest.TestCase):
    """Requests the server refuses before CherryPy sees them (production.refuse: 400, 408,
    413, 431, 501, 503) answer with a request id too, and their log line names it."""

    def assertRefused(self, data, status, request_id):
        headers, lines = refused(data)
        self.assertTrue(headers[None].startswith('HTTP/1.1 ' + status), headers)
        if request_id is FRESH:
            self.assertRegex(headers['X-Request-Id'], FRESH)
        else:
            self.assertEqual(headers['X-Request-Id'], request_id)
        (line,) = [line for line in lines if status in line]
        self.assertIn(f' request_id={headers["X-Request-Id"]}: ', line)
        return headers

    def test_the_clients_id_when_the_head_has_one(self):
        self.assertRefused(b'GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: two-hosts\r\n'
                           b'Host: y\r\n\r\n', '400', 'two-hosts')  # the worker's check
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nX-Amzn-Trace-Id: Root=1-67891233-abc\r\n'
                           b'Content-Length: 9999999\r\n\r\n', '413', 'Root=1-67891233-abc')
        self.assertRefused(b'GET / HTTP/1.1\r\nHost: x\r\nx-request-id: big.1\r\nX-Big: '
                           + b'b' * 20000 + b'\r\n\r\n', '431', 'big.1')  # a head cut short
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nX-Request-ID: chunks-1\r\n'
                           b'Transfer-Encoding: chunked\r\n\r\nzz\r\n', '400', 'chunks-1')
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nX-Request-ID: te-1\r\n'
                           b'Transfer-Encoding: chunked, chunked\r\n\r\n', '400', 'te-1')

    def test_a_fresh_id_without_a_usable_one(self):
        for head in (b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n',  # none
                     b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\nX-Request-ID: two words\r\n\r\n',
                     b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\nX-Request-ID: \xff\r\n\r\n',
                     b'GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: a\x00b\r\n\r\n',
                     b'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'b' * 20000 + b'\r\nX-Request-ID: late'):
            headers = self.assertRefused(head, '4', FRESH)
            self.assertNotIn('late', headers['X-Request-Id'])
        # Only the head counts: an id in the body is the client's data, not its id.
        body = b'\r\nX-Request-ID: in-the-body\r\n\r\n'
        self.assertRefused(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n'
                           + body, '413', FRESH)

    def test_a_request_that_never_arrives_whole_gets_408_with_its_id(self):
        server = serve_in_thread(lambda environ, start_response: [], timeout=1)
        self.addCleanup(server.stop)
        lines = []
        with mock.patch.object(server.client_errors, 'log',
                               lambda message, **kw: lines.append(message)):
            answer = raw(b'GET / HTTP/1.1\r\nHost: x\r\nX-Request-ID: slow-1\r\nX-Half: ',
                         port=server.bind_addr[1])
        self.assertTrue(answer.startswith(b'HTTP/1.1 408 '), answer)
        self.assertIn(b'\r\nX-Request-Id: slow-1\r\n', answer)
        self.assertEqual(lines, ['408 Request Timeout for 127.0.0.1 request_id=slow-1: '
                                 'the request did not arrive in time'])

    def test_id_of_head_takes_any_bytes(self):
        cases = {b'GET / HTTP/1.1\r\nX-Request-ID: a\r\n\r\n': 'a',
                 b'GET / HTTP/1.1\r\nX-REQUEST-ID:\tb \r\nX-Amzn-Trace-Id: t\r\n\r\n': 'b',
                 b'GET / HTTP/1.1\r\nX-Request-ID: bad id\r\nX-Amzn-Trace-Id: t\r\n\r\n': 't',
                 b'GET / HTTP/1.1\r\nX-Request-ID: 1\r\nX-Request-ID: 2\r\n\r\n': '2',
                 b'GET / HTTP/1.1\nX-Request-ID: bare-lf\n\n': 'bare-lf',
                 b'GET / HTTP/1.1\r\nX-Request-ID: ' + b'a' * 128 + b'\r\n': 'a' * 128}
        for head, expected in cases.items():
            self.assertEqual(logs.id_of_head(head), expected, head)
        for head in (b'', b'X-Request-ID: no-line-before\r\n', b'GET / HTTP/1.1\r\nX-Request-ID: cut',
                     b'GET / HTTP/1.1\r\nX-Request-ID: ' + b'a' * 129 + b'\r\n', None, 'text', 42,
                     b'GET / HTTP/1.1\r\n\r\nX-Request-ID: body\r\n', bytes(range(256)) * 300):
            self.assertRegex(logs.id_of_head(head), FRESH, head)

    def test_error_response_never_raises(self):
        server = cherrypy.server.httpserver
        for status, reason, request_id in (('400 Bad Request', 'caf\xe9 \u2713', 'ok-1'),
                                           ('400 Bad Request', '', 'bad id\r\nX-Evil: 1'),
                                           ('400 Bad Request', '', b'bytes'), ('4\u2713', None, None)):
            answer = production.error_response(server, status, reason, request_id)
            self.assertTrue(answer.startswith(b'HTTP/1.1 4'), answer)
            self.assertNotIn(b'X-Evil', answer)
            self.assertIn(b'\r\n\r\n', answer)
        self.assertIn(b'\r\nX-Request-Id: ok-1\r\n', production.error_response(server, '400 Bad Request', '', 'ok-1'))


class CombinedTest(unittest.TestCase):

    def test_the_combined_line_is_unchanged_with_an_id(self):
        with CaptureLog('cherrypy.access') as log:
            get('/logtest/echo?q=1', {'User-Agent': 'tester', 'X-Request-ID': 'abc-123'})
            flush_access_log()
        self.assertEqual(len(log.lines), 1, log.lines)
        self.assertRegex(log.lines[0], r'^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\] '
                                       r'"GET /logtest/echo\?q=1 HTTP/1.1" 200 5 "" "tester"$')


class SettingTest(unittest.TestCase):

    def test_log_format_variable(self):
        self.assertEqual(settings.read_environment({'LOG_FORMAT': ' JSON '}), {'LOG_FORMAT': 'json'})
        with self.assertRaisesRegex(settings.SettingError, "LOG_FORMAT='xml': must be combined or json"):
            settings.read_environment({'LOG_FORMAT': 'xml'})

    def test_a_bad_format_in_prod_conf_exits_2(self):
        with self.assertRaises(SystemExit) as exit, \
                mock.patch('sys.stderr', new_callable=io.StringIO) as stderr:
            logs.install(cherrypy.Application(None), {'ops.log_format': 'xml'})
        self.assertEqual(exit.exception.code, 2)
        self.assertEqual(stderr.getvalue(), "Bad setting: ops.log_format: log format must be one "
                                            "of combined, json, not 'xml'\n")

    def test_a_prod_conf_without_the_setting_logs_combined(self):
        logs.use_format('json')
        logs.install(cherrypy.Application(None), {})
        self.assertFalse(logs.json_lines)

    def test_ids_can_be_turned_off_in_prod_conf(self):
        off, default = cherrypy.Application(None), cherrypy.Application(None)
        off.merge({'/': {'tools.request_id.on': False}})
        for app in (off, default):
            logs.install(app, {})
        self.assertEqual([off.config['/']['tools.request_id.on'],
                          default.config['/']['tools.request_id.on']], [False, True])

    def test_the_server_writes_json_on_stdout_and_stderr(self):
        proc, port, admin = start_server({'LOG_FORMAT': 'json'})
        has_admin = importlib.util.find_spec('server.probes')  # the admin listener is probes'
        listeners = (port, admin) if has_admin else (port,)
        try:
            get('/', {'X-Request-ID': 'from-run-py'}, port=port)
            for listener in listeners:  # a refusal of each listener: a line each
                testing.raw(b'GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n', port=listener)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = stop(proc)
        access = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
        self.assertEqual([(a['path'], a['request_id']) for a in access], [('/', 'from-run-py')])
        errors = [json.loads(line) for line in err.splitlines()]  # every line: JSON
        self.assertIn('ENGINE', {e['context'] for e in errors})
        refusals = [e for e in errors if e['message'].startswith('400 Bad Request for')]
        self.assertEqual(len(refusals), len(listeners), errors)


if __name__ == '__main__':
    testing.main()
