"""Tests of the site: a real server on free loopback ports, spoken to over real HTTP.

    ./testing.sh --site     # these only, under coverage (what ./run.sh runs in the image)
    ./testing.sh            # these and the server's own tests (server/tests/), as CI does
    python test.py -v       # these only, each test by name

Add your own tests at the end (YourTests). The server runs in this process (setUpModule), with
a few test-only pages mounted at /test; server/testing.py has the helpers used here.
"""
import email.utils
import gzip
import os
import signal
import socket
import time
import unittest

import cherrypy

from server import production, testing
from server.testing import HERE, CaptureLog, raw, request

THREADS = 8


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



PORT = testing.PORT


def setUpModule():
    testing.shared_site(THREADS, mount={'/test': Slow()})



class LandingPageTest(unittest.TestCase):

    def test_landing_page_is_a_small_html5_page_with_logo_and_styles(self):
        status, headers, body = request('GET', '/')
        self.assertEqual(status, 200)
        self.assertTrue(headers['Content-Type'].startswith('text/html'))
        page = body.decode()
        self.assertTrue(page.startswith('<!DOCTYPE html>'))
        self.assertIn('<title>', page)
        self.assertIn('src="/logo.png"', page)
        self.assertIn('href="/static/style.css"', page)

    def test_query_strings_from_campaign_links_still_land(self):
        for path in ('/?utm_source=newsletter&utm_medium=email', '/index?ref=x', '/healthcheck?t=1'):
            self.assertEqual(request('GET', path)[0], 200, path)

    def test_index_answers_like_root(self):
        self.assertEqual(request('GET', '/index')[2], request('GET', '/')[2])

    def test_request_data_is_escaped_in_the_page(self):
        body = request('GET', '/', headers={'User-Agent': '<script>alert(1)</script>'})[2]
        self.assertNotIn(b'<script>', body)
        self.assertIn(b'&lt;script&gt;', body)

    def test_a_non_ascii_url_reaches_the_handler_as_utf8(self):
        status, _, body = request('GET', '/test/echo/caf%C3%A9/%E2%9C%93')
        self.assertEqual((status, body.decode()), (200, 'café/✓'))

    def test_head_has_headers_and_no_body(self):
        status, headers, body = request('HEAD', '/')
        self.assertEqual((status, body), (200, b''))
        self.assertTrue(headers['Content-Type'].startswith('text/html'))

    def test_every_answer_carries_hardening_headers_once(self):
        for method, path, port in (('GET', '/', PORT), ('GET', '/logo.png', PORT),
                                   ('GET', '/no/such/page', PORT), ('POST', '/', PORT),
                                   ('GET', '/test/boom', PORT)):
            status, headers, _ = request(method, path, port=port, body=b'x' if method == 'POST' else None)
            where = (method, path, status)
            self.assertEqual(headers.get_all('X-Content-Type-Options'), ['nosniff'], where)
            self.assertEqual(headers.get_all('X-Frame-Options'), ['DENY'], where)
            self.assertIn("frame-ancestors 'none'", headers['Content-Security-Policy'], where)
            self.assertEqual(len(headers.get_all('Referrer-Policy')), 1, where)

    def test_a_handler_that_sets_one_keeps_its_own_value(self):
        headers = request('GET', '/test/framed')[1]
        self.assertEqual(headers.get_all('X-Frame-Options'), ['SAMEORIGIN'])
        self.assertEqual(headers.get_all('X-Content-Type-Options'), ['nosniff'])

    def test_server_header_has_no_version(self):
        server = request('GET', '/')[1]['Server']
        self.assertNotIn(cherrypy.__version__, server)
        self.assertFalse(any(ch.isdigit() for ch in server), server)

    def test_other_methods_get_405_with_allow(self):
        for path in ('/', '/healthcheck', '/static/style.css'):
            for method in ('POST', 'PUT', 'DELETE', 'PATCH'):
                status, headers, _ = request(method, path, body=b'x')
                self.assertEqual(status, 405, (method, path))
                self.assertEqual(headers['Allow'], 'GET, HEAD')


class HealthCheckTest(unittest.TestCase):

    def test_healthcheck_says_yay_and_is_never_cached(self):
        for path in ('/healthcheck', '/healthcheck/'):
            status, headers, body = request('GET', path)
            self.assertEqual((status, body), (200, b'Yay<br />\n'), path)
            self.assertEqual(headers['Cache-Control'], 'no-store')

    def test_healthcheck_answers_head(self):
        status, headers, body = request('HEAD', '/healthcheck')
        self.assertEqual((status, body, headers['Cache-Control']), (200, b'', 'no-store'))

    def test_liveness(self):
        status, headers, _ = request('GET', '/healthcheck/live')
        self.assertEqual((status, headers['Cache-Control']), (200, 'no-store'))

    def test_fresh_requests_answered_with_500_idle_connections_open(self):
        idle = [socket.create_connection(('127.0.0.1', PORT)) for _ in range(500)]
        try:
            time.sleep(0.2)
            # cheroot alone hands each idle connection to a worker until socket_timeout
            # (10 s), so with 8 workers a fresh request waited 10 s or more.
            for path in ('/healthcheck', '/'):
                self.assertEqual(request('GET', path, timeout=3)[0], 200, path)
        finally:
            for s in idle:
                s.close()


class ErrorPageTest(unittest.TestCase):

    def assertBare(self, body):
        for leak in (b'Traceback', b'.py', cherrypy.__version__.encode(), b'CherryPy 1'):
            self.assertNotIn(leak, body)

    def test_404_is_short_and_bare(self):
        status, headers, body = request('GET', '/no/such/page')
        self.assertEqual(status, 404)
        self.assertIn(b'404 Not Found', body)
        self.assertBare(body)

    def test_exception_gives_plain_500_and_logs_the_traceback(self):
        with CaptureLog('cherrypy.error') as log:
            status, _, body = request('GET', '/test/boom')
        self.assertEqual(status, 500)
        self.assertBare(body)
        self.assertNotIn(b'secret detail', body)
        self.assertTrue(any('secret detail' in line for line in log.lines), log.lines)

    def test_server_keeps_serving_after_an_error(self):
        request('GET', '/test/boom')
        self.assertEqual(request('GET', '/healthcheck')[0], 200)

    def test_oversized_body_gets_413(self):
        # The server answers before reading the body, as soon as it sees Content-Length.
        answer = raw(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n' + b'x' * 1000)
        self.assertTrue(answer.startswith(b'HTTP/1.1 413 '), answer[:40])
        self.assertBare(answer)
        self.assertEqual(request('GET', '/')[0], 200)

    def test_oversized_headers_get_an_error_not_a_crash(self):
        answer = raw(b'GET / HTTP/1.1\r\nHost: x\r\nX-Big: ' + b'a' * 20000 + b'\r\n\r\n')
        self.assertRegex(answer, rb'^HTTP/1.1 (400|413|431) ')
        self.assertNotIn(cherrypy.__version__.encode(), answer)
        self.assertEqual(request('GET', '/')[0], 200)

    def test_garbage_request_line_gets_400(self):
        answer = raw(b'\x16\x03\x01 nonsense\r\n\r\n')
        self.assertTrue(answer.startswith(b'HTTP/1.1 400'), answer[:40])
        self.assertEqual(request('GET', '/')[0], 200)


class StaticFilesTest(unittest.TestCase):

    def test_logo_is_a_png(self):
        status, headers, body = request('GET', '/logo.png')
        self.assertEqual((status, headers['Content-Type']), (200, 'image/png'))
        self.assertTrue(body.startswith(b'\x89PNG\r\n\x1a\n'))
        with open(os.path.join(HERE, 'static', 'logo.png'), 'rb') as f:
            self.assertEqual(body, f.read())

    def test_static_files_are_cacheable_and_revalidate_with_304(self):
        for path in ('/logo.png', '/static/style.css'):
            status, headers, _ = request('GET', path)
            self.assertEqual(status, 200)
            self.assertEqual(headers['Cache-Control'], 'public, max-age=3600')
            since = headers['Last-Modified']
            status, headers, body = request('GET', path, headers={'If-Modified-Since': since})
            self.assertEqual((status, body), (304, b''), path)

    def test_answers_are_dated_now_and_files_by_their_modification_time(self):
        before = time.time()
        headers = request('GET', '/logo.png')[1]
        after = time.time()
        dated = email.utils.parsedate_to_datetime(headers['Date']).timestamp()
        self.assertTrue(int(before) <= dated <= after, (before, headers['Date'], after))
        mtime = os.stat(os.path.join(HERE, 'static', 'logo.png')).st_mtime
        self.assertEqual(headers['Last-Modified'], email.utils.formatdate(mtime, usegmt=True))

    def test_http_date_matches_the_standard_library_from_second_to_second(self):
        # production.http_date keeps one string per second: each second must get its own.
        for moment in (0, 0.999, 1, 1700000000.5, 1700000001.25, time.time(), -0.5, -1.5):
            self.assertEqual(production.http_date(moment),
                             email.utils.formatdate(moment, usegmt=True), moment)
        before = email.utils.formatdate(usegmt=True)  # no argument: now
        self.assertIn(production.http_date(), (before, email.utils.formatdate(usegmt=True)))

    def test_text_assets_are_gzipped_when_accepted(self):
        status, headers, body = request('GET', '/static/style.css',
                                        headers={'Accept-Encoding': 'gzip'})
        self.assertEqual((status, headers['Content-Encoding']), (200, 'gzip'))
        with open(os.path.join(HERE, 'static', 'style.css'), 'rb') as f:
            self.assertEqual(gzip.decompress(body), f.read())
        self.assertIsNone(request('GET', '/static/style.css')[1]['Content-Encoding'])
        for path in ('/logo.png', '/healthcheck'):  # compressed already; a few bytes
            headers = request('GET', path, headers={'Accept-Encoding': 'gzip'})[1]
            self.assertIsNone(headers['Content-Encoding'], path)
            self.assertIsNone(headers['Vary'], path)  # nothing varies with Accept-Encoding

    def test_path_traversal_never_leaves_static(self):
        attempts = ['/static/../run.py', '/static/%2e%2e/run.py', '/static/..%2frun.py',
                    '/static/%2e%2e%2frun.py', '/static/..%5crun.py', '/static//etc/passwd',
                    '/static/%2fetc%2fpasswd', '/static/....//run.py', '/static/%252e%252e/run.py',
                    '/static/./../prod.conf', '/logo.png/../run.py', '/static/%00../run.py']
        for path in attempts:
            answer = raw(f'GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'.encode())
            status = int(answer.split(b' ', 2)[1])
            for secret in (b'def main', b'root:', b'[global]'):
                self.assertNotIn(secret, answer, path)
            if path.startswith('/logo.png'):  # everything under /logo.png is the logo
                self.assertIn(b'\x89PNG', answer)
            else:
                self.assertIn(status, (400, 403, 404), path)



class ServerProcessTest(unittest.TestCase):

    def test_run_py_serves_then_stops_with_status_0_on_sigterm(self):
        proc, port, _ = testing.start_server()  # `python run.py`, as ./run.sh and Docker start it
        self.assertEqual(request('GET', '/', port=port)[0], 200)
        proc.send_signal(signal.SIGTERM)  # what docker stop sends
        out, err = testing.stop(proc)
        self.assertEqual(proc.returncode, 0, err[-2000:])
        self.assertIn('Serving on http://127.0.0.1', out)


class YourTests(unittest.TestCase):
    """Your pages' tests go here: request() answers (status, headers, body)."""

    def test_landing_page_greets_the_visitor(self):
        body = request('GET', '/', headers={'User-Agent': 'test-agent'})[2]
        self.assertIn(b'Hello, test-agent.', body)


if __name__ == '__main__':
    testing.main()
