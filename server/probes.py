"""Health probes that tell the truth in every phase, and a shutdown that loses no request.

    starting -> ready -> draining (after SIGTERM) -> stopped

- Readiness (/healthcheck): 200 only while ready, the main listener is serving and every
  readiness check passes; otherwise 503 with a short reason. Load balancers and the
  Kubernetes readinessProbe use it to send or stop sending traffic.
- Liveness (/healthcheck/live): 200 whenever the process answers. It checks nothing else,
  so a database outage never makes Kubernetes restart every pod.
- SIGTERM/SIGINT: readiness turns 503 at once, the server keeps serving DRAIN_SECONDS so
  balancers deregister it, then stops accepting, finishes requests in flight and exits 0.
  A second signal stops at once.
- The admin listener (ADMIN_PORT) serves the same probes from its own small thread pool,
  so they answer even while every main worker is busy with slow requests.

Register a readiness check (none by default) in run.py:

    @probes.readiness_check('database', timeout=0.5)
    def database():
        db.ping()        # raise, or return False, when not ready
"""
import inspect
import threading
import time

import cherrypy
from cherrypy.process import servers

from . import exit_once_started, production, settings

STARTING, READY, DRAINING, STOPPED = 'starting', 'ready', 'draining', 'stopped'
ADMIN_THREADS = 4       # probes take about a millisecond; 4 threads serve thousands a second
CHECK_INTERVAL = 1.0    # run readiness checks at most once a second, however many probes come
SELECTOR_STALL = 5.0    # seconds without a selector loop before the main listener counts as stuck


class Lifecycle:
    """The server's phase and its readiness checks, shared by every thread."""

    def __init__(self):
        self.state = STARTING
        self.stop_requested = False  # a stop signal that came while starting
        self.admin = None            # the admin listener's ServerAdapter, if any
        self.admin_root = None       # its root object: internal pages (dashboard.py) attach here
        self.drain_timer = None
        self.checks = {}  # name: (function, timeout)
        self._cached = (0.0, None)  # (when, reason)
        self._lock = threading.Lock()
        self._running = {}  # name: the _CheckRun still under way

    def not_ready_reason(self):
        """None when ready; else a short reason for the 503 body."""
        if self.state != READY:
            return self.state
        listener = _main_listener_problem()
        if listener:
            return listener
        with self._lock:
            when, reason = self._cached
            if time.monotonic() - when >= CHECK_INTERVAL:
                reason, detail = self._run_checks()
                if reason != self._cached[1]:  # logged when it changes, not once a second
                    cherrypy.log(f'Not ready: {reason}{detail}' if reason else 'Ready again: '
                                 'every readiness check passes', 'PROBES')
                self._cached = (time.monotonic(), reason)
        return reason

    def _run_checks(self):
        """(reason, detail for the log) of the first check that fails; (None, '') if none."""
        runs = {name: self._start(name, fn) for name, (fn, _) in self.checks.items()}
        for name, run in runs.items():
            timeout = self.checks[name][1]
            if not run.done.wait(timeout):
                return f'check {name!r} timed out', f' (after {timeout} s)'
            if run.error is not None:  # details go to the log, not to the client
                return f'check {name!r} failed', f': {run.error!r}'
            if run.result is False:
                return f'check {name!r} failed', ': it returned False'
        return None, ''

    def _start(self, name, fn):
        """A check still running from an earlier probe is waited on, not started again,
        so one that hangs holds one thread, not one more each second."""
        run = self._running.get(name)
        if run is None or run.done.is_set():
            run = self._running[name] = _CheckRun(name, fn)
        return run


class _CheckRun:
    """One run of a readiness check in its own daemon thread: a check that hangs can
    never hold up the process's exit (engine.block() waits for every non-daemon thread)."""

    def __init__(self, name, fn):
        self.result = self.error = None
        self.done = threading.Event()
        self.fn = fn
        threading.Thread(target=self._run, name=f'readiness {name}', daemon=True).start()

    def _run(self):
        try:
            self.result = self.fn()
        except Exception as error:
            self.error = error
        finally:
            self.done.set()


lifecycle = Lifecycle()


def not_ready_reason():
    return lifecycle.not_ready_reason()


YAY, ALIVE = 'Yay<br />\n', 'Alive\n'


def readiness():
    """(status, body): 200 "Yay<br />\n" when ready, else 503 "Not ready: <reason>"."""
    reason = not_ready_reason()
    return (503, f'Not ready: {reason}\n') if reason else (200, YAY)


def readiness_check(name, timeout=1.0):
    """Decorator: register a readiness check that must finish within `timeout` seconds."""
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= 60):
        raise ValueError(f'readiness check {name!r}: timeout must be above 0 and at most 60 s')

    def register(fn):
        if inspect.iscoroutinefunction(fn):  # its coroutine object is truthy: always "ready"
            raise TypeError(f'readiness check {name!r}: write it as a plain def, not async def')
        lifecycle.checks[name] = (fn, timeout)
        return fn
    return register


def _main_listener_problem():
    """The admin listener can look healthy while the main one is stuck: look at the main one.

    Busy is not unready: a pod whose workers are all busy stays in rotation, since taking
    it out would pile its load on the others and could cascade.
    """
    server = cherrypy.server.httpserver
    if server is None or not server.ready:
        return 'main listener not serving'
    last_loop = getattr(server, 'last_loop', None)
    if last_loop is not None and time.monotonic() - last_loop > SELECTOR_STALL:
        return 'main listener stuck'
    return None


class AdminRoot:
    """The admin listener's site: probes here; internal pages can be added."""

    def __init__(self, healthcheck):
        self.healthcheck = healthcheck


def _probes_first(app):
    """WSGI in front of the admin site: GET/HEAD of the probe URLs answered without
    CherryPy's request machinery, at a third of its CPU (0.4 ms, not 1.2 ms).

    Every balancer node and kubelet probes every pod, and those probes share one core's
    worth of Python with the site: measured with 200 clients probing every 100 ms while
    every worker was busy (.ci/elb_sim.py), CherryPy's path timed out in 3 runs of 17,
    this one in none of 7. Other admin pages still go through CherryPy.
    """
    answers = {'/healthcheck': readiness, '/healthcheck/': readiness,
               '/healthcheck/live': lambda: (200, ALIVE)}

    def wsgi(environ, start_response):
        answer = answers.get(environ['PATH_INFO'])
        if answer is None or environ['REQUEST_METHOD'] not in ('GET', 'HEAD'):
            return app(environ, start_response)
        status, text = answer()
        body = text.encode()
        start_response('200 OK' if status == 200 else '503 Service Unavailable', [
            ('Content-Type', 'text/html;charset=utf-8'), ('Content-Length', str(len(body))),
            ('Cache-Control', 'no-store')])  # the hardening headers: production._Request
        return [] if environ['REQUEST_METHOD'] == 'HEAD' else [body]
    return wsgi


def _admin_server(config, root):
    app = cherrypy.Application(root)
    production.configure_app(app, config)  # same headers, error pages and log as the main site
    if not config['ops.log_health_checks']:  # logged probes go through CherryPy's access log
        app = _probes_first(app)
    address = (config['server.socket_host'], config['ops.admin_port'])
    server = production.AdminServer(address, app, numthreads=ADMIN_THREADS,
                                    request_queue_size=config['server.socket_queue_size'])
    server.tune(config['ops.keep_alive_timeout'], config['ops.keep_alive_limit'],
                config['ops.response_headers'])
    return production.wait_without_socket(servers.ServerAdapter(cherrypy.engine, server, address))


def _on_signal(drain_seconds):
    def handler():
        if lifecycle.state == DRAINING:  # a second Ctrl-C or SIGTERM: do not wait
            cherrypy.log('Second stop signal: stopping now', 'PROBES')
            lifecycle.drain_timer.cancel()
            exit_once_started()
            return
        if lifecycle.state == STARTING:  # stopping half-started would exit 70: finish first
            lifecycle.stop_requested = True
            return
        if lifecycle.state != READY:
            return
        lifecycle.state = DRAINING
        for server in _listeners():
            server.draining = True  # answers now say "Connection: close"
        cherrypy.log(f'Stop requested: readiness 503, serving {drain_seconds} s more', 'PROBES')
        lifecycle.drain_timer = threading.Timer(drain_seconds, exit_once_started)
        lifecycle.drain_timer.start()
    return handler


def _listeners():
    admin = lifecycle.admin and lifecycle.admin.httpserver
    return [server for server in (cherrypy.server.httpserver, admin) if server is not None]


def install(config, healthcheck):
    """Wire the lifecycle into CherryPy's engine, signals and an optional admin listener."""
    lifecycle.state = STARTING
    lifecycle.stop_requested = False
    lifecycle.admin = lifecycle.admin_root = None
    if config['ops.admin_port'] and config['ops.admin_port'] == config['server.socket_port']:
        settings.refuse(f"ADMIN_PORT={config['ops.admin_port']}: the same port as PORT; the "
                        'admin listener needs a port of its own (0 turns it off)')
    if config['ops.admin_port']:
        lifecycle.admin_root = AdminRoot(healthcheck)
        lifecycle.admin = _admin_server(config, lifecycle.admin_root)
        lifecycle.admin.subscribe()

    handler = _on_signal(config['ops.drain_seconds'])

    def ready():
        lifecycle.state = READY
        if lifecycle.stop_requested:
            handler()

    def stopped():
        lifecycle.state = STOPPED

    # Ready only once every listener is up (servers start at priority 75); 503 from the
    # moment the engine starts stopping (servers stop at priority 50).
    cherrypy.engine.subscribe('start', ready, priority=90)
    cherrypy.engine.subscribe('stop', stopped, priority=10)

    handlers = cherrypy.engine.signal_handler.handlers
    handlers['SIGTERM'] = handlers['SIGINT'] = handler
    return lifecycle

