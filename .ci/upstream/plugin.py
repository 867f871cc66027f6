"""pytest plugin: run cheroot's and CherryPy's own test suites against the template's server.

Loaded by .ci/upstream-suites.sh with `-p plugin` (this folder on PYTHONPATH), in one of two
modes chosen by the environment:

  UPSTREAM_SUITE=cheroot|cherrypy  which suite is running (which classes to swap)
  UPSTREAM_CP_PORT=N        CherryPy's suite serves on port N instead of its fixed 54583
  UPSTREAM_SERVER=stock     the suites as published (the baseline on this machine)
  UPSTREAM_SERVER=template  the same tests, with the template's server swapped in:
      cheroot:  cheroot.server.HTTPServer and cheroot.wsgi.Server become subclasses mixed
                with production.TunedServer (its TunedConnection, IdleConnections, PacedQueue
                and, for the WSGI server, production.AdminServer itself), tuned as prod.conf
                says (ops.keep_alive_timeout, ops.keep_alive_limit, ops.response_headers);
      CherryPy: every server that cherrypy.server builds (cherrypy._cpserver.Server
                .httpserver_from_self) is production.Server, tuned the same way, and
                httputil.HTTPDate is production.http_date, as production.install() does.
                The application-level part of install() (error pages, access log) is left
                out: it changes pages on purpose and is not the server.

Python processes started by the tests (this folder stays on their PYTHONPATH) import this
module too, through sitecustomize.py.

In both modes:
  - every socket bound to a wildcard address ('', 0.0.0.0, ::) is bound to loopback instead
    (see guard_binds): the suites listen on all interfaces in places, a CI job must not;
  - each test's outcome is written to the JSON file UPSTREAM_RESULTS (nodeid -> outcome),
    which compare.py reads.

The template's module is found by import, wherever the restructuring puts it:
`from server import production`, else `import production`, with UPSTREAM_REPO (the
repository's root) on sys.path. Only public names are used: production.Server,
production.TunedServer (or production.AdminServer), production.http_date if it exists, and
TunedServer.tune() if it exists, its arguments matched by name to prod.conf's "ops." keys.
"""
import functools
import inspect
import json
import os
import socket
import sys
import types

MODE = os.environ.get('UPSTREAM_SERVER', 'stock')  # or 'template'
SUITE = os.environ.get('UPSTREAM_SUITE', 'cherrypy')  # or 'cheroot': which classes to swap
RESULTS = os.environ.get('UPSTREAM_RESULTS')

# ----------------------------------------------------------------------- loopback only --

# A wildcard IPv6 bind becomes the IPv4 loopback through a dual-stack socket
# (::ffff:127.0.0.1): such tests connect to "localhost", which is 127.0.0.1 on CI machines.
# cheroot's fixtures bind testing.ANY_INTERFACE_IPV6/IPV4 and connect to ::1/127.0.0.1:
# those constants become the loopback addresses themselves (guard_binds).
_WILDCARDS = {socket.AF_INET: ('', '0.0.0.0'), socket.AF_INET6: ('', '::', '::0')}
_LOOPBACK = {socket.AF_INET: '127.0.0.1', socket.AF_INET6: '::ffff:127.0.0.1'}
_bind = socket.socket.bind


def _loopback_bind(self, address):
    if (isinstance(address, tuple) and self.family in _WILDCARDS
            and address[0] in _WILDCARDS[self.family]):
        address = (_LOOPBACK[self.family],) + tuple(address[1:])
    return _bind(self, address)


def guard_binds():
    socket.socket.bind = _loopback_bind
    try:
        import cheroot.testing
    except ImportError:  # cheroot's test dependencies missing: not a suite run
        return
    cheroot.testing.ANY_INTERFACE_IPV4 = '127.0.0.1'
    cheroot.testing.ANY_INTERFACE_IPV6 = '::1'


# ------------------------------------------------------------- the template's server --

def import_production():
    repo = os.environ.get('UPSTREAM_REPO')
    if repo and repo not in sys.path:
        sys.path.append(repo)  # last: the repository's test.py must not hide anything
    try:
        from server import production
    except ImportError:
        import production
    return production


def _prod_conf(repo):
    """prod.conf's "global" section, wherever the restructuring puts the file."""
    from cherrypy.lib import reprconf
    for folder in ('', 'server'):
        path = os.path.join(repo or '.', folder, 'prod.conf')
        if os.path.isfile(path):
            return reprconf.Parser().dict_from_file(path).get('global', {})
    return {}


# tune() argument name -> prod.conf key, where the two names differ
_ALIASES = {'site_headers': 'ops.response_headers'}


def tuner(production):
    """A function that tunes a new server as production.install() does (prod.conf values)."""
    conf = _prod_conf(os.environ.get('UPSTREAM_REPO'))
    tune = getattr(production.TunedServer, 'tune', None) if hasattr(production, 'TunedServer') \
        else getattr(production.Server, 'tune', None)
    if tune is None:
        return lambda server: None
    kwargs = {}
    for name, param in inspect.signature(tune).parameters.items():
        if name == 'self' or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        key = _ALIASES.get(name, 'ops.' + name)
        if key in conf:
            kwargs[name] = conf[key]
        elif param.default is param.empty:
            raise RuntimeError(f'cannot tune the template server: no {key} in prod.conf')
    return lambda server: server.tune(**kwargs)


def _tuned_mixin(production):
    mixin = getattr(production, 'TunedServer', None)
    if mixin is not None:
        return mixin
    import cheroot.wsgi  # no TunedServer: what AdminServer adds to cheroot's WSGI server
    bases = [c for c in production.AdminServer.__mro__[1:]
             if c not in cheroot.wsgi.Server.__mro__ and c is not object]
    return type('TunedServer', tuple(bases), {})


def swap_cheroot(production, tune):
    import cheroot.server
    import cheroot.testing
    import cheroot.wsgi

    mixin = _tuned_mixin(production)
    stock_native, stock_wsgi = cheroot.server.HTTPServer, cheroot.wsgi.Server
    wsgi_base = getattr(production, 'AdminServer', None)
    if wsgi_base is None or not issubclass(wsgi_base, stock_wsgi):
        wsgi_base = type('AdminServer', (mixin, stock_wsgi), {})

    class HTTPServer(mixin, stock_native):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tune(self)

    class Server(wsgi_base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tune(self)

    native, wsgi = HTTPServer, Server
    # cheroot.wsgi.Server.__init__ calls super(Server, self) by its module's global name,
    # which is about to name the subclass: let that one function keep seeing the stock class.
    init = stock_wsgi.__init__
    stock_wsgi.__init__ = functools.update_wrapper(types.FunctionType(
        init.__code__, dict(init.__globals__, Server=stock_wsgi), init.__name__,
        init.__defaults__, init.__closure__), init)
    stock_wsgi.__init__.__kwdefaults__ = init.__kwdefaults__
    cheroot.server.HTTPServer = native
    cheroot.wsgi.Server = cheroot.wsgi.WSGIServer = wsgi
    config = cheroot.testing.config
    config[native], config[wsgi] = config[stock_native], config[stock_wsgi]


def swap_cherrypy(production, tune):
    from cherrypy import _cpserver
    from cherrypy.lib import httputil

    stock = _cpserver.Server.httpserver_from_self
    stock_names = (None, 'cherrypy._cpwsgi_server.CPWSGIServer')

    def httpserver_from_self(self, httpserver=None):
        if httpserver is None:
            httpserver = self.instance
        if httpserver in stock_names:  # what CherryPy would build: its WSGI server
            httpserver = production.Server(self)
            tune(httpserver)
        return stock(self, httpserver)

    _cpserver.Server.httpserver_from_self = httpserver_from_self
    if hasattr(production, 'http_date'):
        httputil.HTTPDate = production.http_date


def swap_in_template(suite):
    production = import_production()
    tune = tuner(production)
    if suite == 'cheroot':
        swap_cheroot(production, tune)
    else:
        swap_cherrypy(production, tune)
    return production


# ------------------------------------------------------------------ pytest hooks --

# At import (`-p plugin`), before pytest loads the suites' conftest.py files: cheroot's
# binds `HTTPServer` when it is imported.
guard_binds()
_production = swap_in_template(SUITE) if MODE == 'template' else None
_outcomes = {}
os.environ['UPSTREAM_CHILD'] = '1'  # sitecustomize.py: child processes import this too


def pytest_configure(config):
    import pytest
    production = import_production()
    missing = production.check_upstream(production.UPSTREAM_HARNESS)
    if missing:  # an upgrade moved what this harness patches: say so, not a confusing failure
        raise pytest.UsageError('upstream changed what the harness relies on '
                                '(production.UPSTREAM_HARNESS): ' + ', '.join(missing))
    port = os.environ.get('UPSTREAM_CP_PORT')
    if SUITE == 'cherrypy' and port:
        use_port(int(port))


def use_port(port):
    """CherryPy's test classes all serve on port 54583: another run of its suite on the same
    machine (another job, another checkout) would collide, so the script picks a free one."""
    from cherrypy.test import helper
    stock = helper.CPWebCase._setup_server.__func__

    def _setup_server(cls, supervisor, conf):
        supervisor.port = port
        return stock(cls, supervisor, conf)

    helper.CPWebCase._setup_server = classmethod(_setup_server)


def pytest_report_header(config):
    where = f' (template: {_production.__file__})' if _production else ''
    return f'upstream-suites: {SUITE} suite, {MODE} server{where}'


def pytest_runtest_logreport(report):
    """One outcome per test: failed if any phase failed, else the call's outcome."""
    previous = _outcomes.get(report.nodeid)
    if previous == 'failed':
        return
    if report.failed:
        outcome = 'failed'
    elif report.when == 'call' or (report.when == 'setup' and report.skipped):
        outcome = 'xfailed' if hasattr(report, 'wasxfail') and report.skipped else (
            'xpassed' if hasattr(report, 'wasxfail') else report.outcome)
    else:
        return
    _outcomes[report.nodeid] = outcome


def pytest_sessionfinish(session, exitstatus):
    if RESULTS:
        with open(RESULTS, 'w') as out:
            json.dump(_outcomes, out, indent=0, sort_keys=True)
