"""Internal dashboards: landing-page visits, /stats (JSON), /metrics (Prometheus), /dashboard.

    visits       GET/HEAD of "/" or "/index" answered 2xx: total, and per minute for the last hour
    /stats       JSON for people and scripts (fields below, in Counters.snapshot)
    /metrics     Prometheus text format, from prometheus-client
    /dashboard   an HTML page drawing /stats, refreshed every few seconds (static/dashboard.js)

Who sees them: the pages are served on the admin listener (ADMIN_PORT), which is private:
the Kubernetes Service does not expose it, so reach it with `kubectl port-forward`. To serve
them on the public site as well, set DASHBOARD_TOKEN: /stats and /metrics then answer there
only with "Authorization: Bearer <token>" (the /dashboard page takes it as /dashboard#<token>;
a URL fragment is never sent to the server, so the token stays out of access logs).

Counting is a CherryPy tool on the main site: one hook per request and one lock.
Health probes are counted apart and stay out of the latency figures. The counts live in
the process: with WORKERS=N each process has its own, and each request for /stats or
/metrics is answered by whichever process the kernel picks (see process_id).

Remove the feature: delete dashboard.py, static/dashboard.js, static/dashboard.css, the
DashboardTest block of test.py and the `dashboard.install(...)` line of run.py.
"""
import collections
import hmac
import os
import sys
import threading
import time

import cherrypy
import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import production

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project folder
VISIT_PATHS = ('/', '/index')  # the landing page; add a page here to count its views as visits
RESERVOIR = 1000               # response-time percentiles cover the last 1000 requests
MIN_TOKEN_LENGTH = 16          # a short token can be guessed
STATUS_CLASSES = ('1xx', '2xx', '3xx', '4xx', '5xx')


class Counters:
    """Every number the pages show. Thread-safe: one lock around a few integer updates.

    It is also the Prometheus collector of its registry: /metrics reads the same numbers as
    /stats at each scrape, so a request costs one lock and a histogram observation.
    """

    def __init__(self, clock=time.time):
        self.clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self.visits = 0
        self._minutes = [(-1, 0)] * 60  # slot minute % 60: (minute, visits in it)
        self.requests = collections.Counter()  # (path template, status): answered requests
        self.probes = collections.Counter()    # status: health-probe requests
        self.in_flight = 0
        self._latencies = collections.deque(maxlen=RESERVOIR)
        # Its own registry, not the global one: a second configure() or a test gets fresh metrics.
        self.registry = prometheus_client.CollectorRegistry()
        self.registry.register(self)
        self.latency_metric = prometheus_client.Histogram(
            'http_request_duration_seconds', 'Response time; health probes excluded.',
            registry=self.registry)
        prometheus_client.ProcessCollector(registry=self.registry)  # memory, CPU, open files

    def start(self, probe):
        if not probe:
            with self._lock:
                self.in_flight += 1

    def finish(self, path, status, seconds, visit=False, probe=False):
        """Count one answered request; `path` is its template (see path_template)."""
        if probe:
            with self._lock:
                self.probes[status] += 1
            return
        minute = int(self.clock() // 60)
        with self._lock:
            self.in_flight -= 1
            self.requests[path, status] += 1
            self._latencies.append(seconds)
            if visit:
                self.visits += 1
                slot_minute, count = self._minutes[minute % 60]
                self._minutes[minute % 60] = (minute, count + 1 if slot_minute == minute else 1)
        self.latency_metric.observe(seconds)

    def collect(self):
        """The counters and gauges of /metrics (the registry calls this at each scrape)."""
        with self._lock:
            requests, probes = sorted(self.requests.items()), sorted(self.probes.items())
            visits, in_flight = self.visits, self.in_flight
        family = CounterMetricFamily(
            'http_requests', 'Requests answered, by path template and status; probes excluded.',
            labels=['path', 'status'])
        for (path, status), count in requests:
            family.add_metric([path, str(status)], count)
        yield family
        family = CounterMetricFamily(
            'health_probes', 'Health-probe requests on the main listener.', labels=['status'])
        for status, count in probes:
            family.add_metric([str(status)], count)
        yield family
        yield CounterMetricFamily(
            'visits', 'Landing page views (GET/HEAD of / or /index answered 2xx).', value=visits)
        yield GaugeMetricFamily(
            'http_requests_in_flight', 'Requests being answered now.', value=in_flight)
        workers = threads()
        yield GaugeMetricFamily(
            'http_threads_busy', 'Worker threads answering a request.', value=workers['busy'])
        yield GaugeMetricFamily(
            'http_threads_idle', 'Worker threads waiting for a request.', value=workers['idle'])

    def snapshot(self):
        """The /stats document. Field names are stable; add fields, do not rename them."""
        now = self.clock()
        minute = int(now // 60)
        with self._lock:
            per_minute = [count if slot_minute == m else 0
                          for m in range(minute - 59, minute + 1)
                          for slot_minute, count in [self._minutes[m % 60]]]
            latencies = sorted(self._latencies)
            requests = list(self.requests.items())
            visits, in_flight, probes = self.visits, self.in_flight, sum(self.probes.values())
        classes = dict.fromkeys(STATUS_CLASSES, 0)
        for (_, status), count in requests:
            classes[STATUS_CLASSES[min(max(status // 100, 1), 5) - 1]] += count

        def percentile(q):  # nearest rank, in milliseconds
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

        return {
            'uptime_seconds': round(now - self.started, 1),
            'process_id': os.getpid(),  # with WORKERS=N each process counts its own requests
            'visits': {'total': visits, 'last_hour': sum(per_minute),
                       'per_minute': per_minute,  # 60 numbers, oldest first; the last is this minute
                       'per_minute_start': (minute - 59) * 60},  # Unix time of the first minute
            'requests': dict(classes, total=sum(classes.values())),  # health probes excluded
            'health_probes': probes,
            'in_flight': in_flight,
            'threads': threads(),
            'response_ms': {'p50': percentile(0.5), 'p90': percentile(0.9),
                            'p99': percentile(0.99), 'max': percentile(1),
                            'samples': len(latencies)},
        }


def threads():
    """Busy and idle workers of the main listener, read from cheroot's pool as they are
    (server.statistics stays off: its per-connection bookkeeping adds nothing shown here)."""
    pool = getattr(cherrypy.server.httpserver, 'requests', None)
    total = len(pool._threads) if pool is not None else 0  # production.UPSTREAM lists it
    idle = pool.idle if total else 0
    return {'busy': total - idle, 'idle': idle, 'total': total}


def path_template(request):
    """A bounded label, read when the request reaches the app: the handler's URL without its
    arguments, "/static" for files, "other" when no handler answers (see finish: 404s too),
    so a scan of random URLs adds a single label."""
    config = request.config
    if config.get('tools.staticdir.on') or config.get('tools.staticfile.on'):
        return '/static'
    handler = request.handler
    if not hasattr(handler, 'callable'):  # the dispatcher found nothing: NotFound
        return 'other'
    path = request.path_info.rstrip('/') or '/'
    if handler.args:  # "/page/123" answered by page(id): the template is "/page"
        path = path.rsplit('/', len(handler.args))[0] or '/'
    return path


class CountingTool(cherrypy.Tool):
    """tools.count. CherryPy calls _setup once per request, as the request reaches the app
    and its handler is known: start the clock there, and count the request in the
    on_end_request hook, which runs once the answer is written, for errors too."""

    def __init__(self):
        super().__init__('on_end_request', self.finish)

    def _setup(self):
        counters = self._merged_args()['counters']
        request = cherrypy.serving.request
        request.count_probe = request.path_info.startswith(production.HEALTH_PATH)
        request.count_path = path_template(request)
        counters.start(request.count_probe)
        request.count_started = time.perf_counter()
        request.hooks.attach('on_end_request', self.finish, failsafe=True, counters=counters)

    @staticmethod
    def finish(counters):
        request = cherrypy.serving.request
        seconds = time.perf_counter() - request.count_started
        status = int((cherrypy.serving.response.output_status or b'500')[:3])
        path = 'other' if status == 404 else request.count_path
        visit = path in VISIT_PATHS and request.method in ('GET', 'HEAD') and status // 100 == 2
        counters.finish(path, status, seconds, visit=visit, probe=request.count_probe)


cherrypy.tools.count = CountingTool()


def check_token(token):
    """401 unless the request carries "Authorization: Bearer <token>"."""
    sent = cherrypy.serving.request.headers.get('Authorization', '')
    scheme, _, value = sent.partition(' ')
    # compare_digest takes as long for a near miss as for a wild guess: no timing hints.
    if not (scheme.lower() == 'bearer' and hmac.compare_digest(value.strip().encode(), token.encode())):
        cherrypy.serving.response.headers['WWW-Authenticate'] = 'Bearer'
        raise cherrypy.HTTPError(401)


class Pages:
    """/stats, /metrics and /dashboard, attached to a site's root object.

    With a token, the data pages check it themselves: every URL that reaches them is
    checked, however it is spelled, with no config section to keep in step.
    """

    def __init__(self, counters, token=None):
        self.counters = counters
        self.token = token

    @cherrypy.expose
    @cherrypy.tools.json_out()
    def stats(self):
        if self.token:
            check_token(self.token)
        cherrypy.serving.response.headers['Cache-Control'] = 'no-store'
        return self.counters.snapshot()

    @cherrypy.expose
    def metrics(self):
        if self.token:
            check_token(self.token)
        cherrypy.serving.response.headers['Content-Type'] = prometheus_client.CONTENT_TYPE_LATEST
        cherrypy.serving.response.headers['Cache-Control'] = 'no-store'
        return prometheus_client.generate_latest(self.counters.registry)

    @cherrypy.expose
    def dashboard(self):
        return DASHBOARD_PAGE


class StaticFiles:
    """static/ on the admin listener, so the page works through a port-forward of it alone."""

    _cp_config = {'tools.staticdir.on': True, 'tools.staticdir.dir': os.path.join(HERE, 'static')}


DASHBOARD_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Dashboard</title>
<link rel="icon" href="/static/logo.png">
<link rel="stylesheet" href="/static/dashboard.css">
<script src="/static/dashboard.js" defer></script>
</head>
<body>
<h1>Dashboard</h1>
<p id="status">Loading /stats&hellip;</p>
<dl class="numbers">
<div><dt>Visits</dt><dd id="visits">&ndash;</dd></div>
<div><dt>Visits, last hour</dt><dd id="visits-hour">&ndash;</dd></div>
<div><dt>Requests (2xx / 4xx / 5xx)</dt><dd id="requests">&ndash;</dd></div>
<div><dt>In flight</dt><dd id="in-flight">&ndash;</dd></div>
<div><dt>Threads busy / idle</dt><dd id="threads">&ndash;</dd></div>
<div><dt>Response ms p50 / p90 / p99</dt><dd id="latency">&ndash;</dd></div>
<div><dt>Health probes</dt><dd id="probes">&ndash;</dd></div>
<div><dt>Uptime</dt><dd id="uptime">&ndash;</dd></div>
</dl>
<h2>Visits per minute, last hour</h2>
<svg id="chart" viewBox="0 0 640 220" role="img" aria-label="Visits per minute, last hour"></svg>
</body>
</html>
"""


def install(app, admin_root, environ=os.environ):
    """Count the requests of `app`; serve the pages on the admin root and, when
    DASHBOARD_TOKEN is set, on the public site behind that token. Returns the Counters."""
    counters = Counters()
    pages = Pages(counters)  # the admin listener is private: no token there
    app.merge({'/': {'tools.count.on': True, 'tools.count.counters': counters}})
    if admin_root is not None:
        admin_root.stats, admin_root.metrics = pages.stats, pages.metrics
        admin_root.dashboard, admin_root.static = pages.dashboard, StaticFiles()
    token = environ.get('DASHBOARD_TOKEN', '')
    if token:
        if len(token) < MIN_TOKEN_LENGTH or token != token.strip():
            print(f'Bad setting: DASHBOARD_TOKEN: must be at least {MIN_TOKEN_LENGTH} characters '
                  'without surrounding spaces', file=sys.stderr)
            raise SystemExit(2)
        guarded = Pages(counters, token)
        app.root.stats, app.root.metrics, app.root.dashboard = (
            guarded.stats, guarded.metrics, guarded.dashboard)
    return counters
