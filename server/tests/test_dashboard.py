"""Tests of the dashboards (server/dashboard.py): delete this file with dashboard.py."""
import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import unittest

import cherrypy
from prometheus_client.parser import text_string_to_metric_families

from server import dashboard, testing
from server.testing import HERE, free_port, request, start_server, stop

THREADS = testing.SHARED_THREADS
PORT, ADMIN_PORT = testing.PORT, testing.ADMIN_PORT


class Slow:
    @cherrypy.expose
    def sleep(self, seconds='1'):
        time.sleep(float(seconds))
        return 'slept\n'


def setUpModule():
    testing.shared_site(mount={'/test': Slow()})


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


class DashboardHeadersTest(unittest.TestCase):

    def test_the_dashboard_carries_the_hardening_headers(self):
        headers = request('GET', '/dashboard', port=ADMIN_PORT)[1]
        self.assertEqual(headers.get_all('X-Frame-Options'), ['DENY'])
        self.assertIn("frame-ancestors 'none'", headers['Content-Security-Policy'])


if __name__ == '__main__':
    testing.main()
