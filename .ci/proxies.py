"""Real nginx and HAProxy in front of two template instances (issue 15).

Starts two instances of the template on loopback (`run.main()` plus a few test-only pages
under /t/), puts a real nginx and a real HAProxy in front of them with the configurations in
.ci/proxies/ (health checks on the admin port, keep-alive to the instances), and checks:

    trust    TRUST_PROXY=1: the app sees the address the proxy appended to X-Forwarded-For
             and the proxy's X-Forwarded-Proto, not what the client sent
    smuggle  request-smuggling attacks sent raw to each proxy: no request reaches an instance
             that the proxy did not itself log, and the next user gets their own answer
    rolling  load through one proxy while each instance in turn gets SIGTERM (DRAIN_SECONDS)
             and is replaced: zero failed and zero 5xx answers at the client
    race     instances with KEEP_ALIVE_TIMEOUT=2: the proxy's upstream idle timeout below it
             (as recommended: zero 502s) and above it with retries off (the race, counted)

Prints Markdown tables and "N passed, N failed"; exits 1 if a check fails. Run it with
.ci/proxies.sh, which installs nginx and HAProxy and the app's requirements. About 3 minutes.

Every process started here is written to --pids (one PID a line) as soon as it starts, so
that proxies.sh's trap can stop them even if this driver is killed.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATES = os.path.join(ROOT, '.ci', 'proxies')
HOST = '127.0.0.1'
CLIENT = '127.0.0.2'          # the "client" address: loopback, but not the proxies' own
SPOOFED = '203.0.113.66'      # what a client writes in X-Forwarded-For itself
DRAIN_SECONDS = 3             # > HAProxy's 2 failed checks 500 ms apart
SHUTDOWN_TIMEOUT = 5
RACE_KEEP_ALIVE = 2           # the instances' KEEP_ALIVE_TIMEOUT in the race scenario
LOAD_CLIENTS = 20             # keep-alive client connections during a rolling restart
RACE_CLIENTS = 40             # requests in one burst of the race scenario
RACE_BURSTS = 12
BUSY_CLIENTS = 3              # direct clients per instance during the race, each on /t/spin
BUSY_MS = 20                  # CPU per /t/spin request
SETTLE = 2.5                  # after a replacement is ready, before the next SIGTERM (nginx's fail_timeout 2 s)

# The server's settings (README "Settings"): cleared so that the machine's environment
# cannot change the run. A list, not `settings.VARIABLES`: the modules are moving to server/.
SETTINGS = ('PORT', 'HOST', 'THREAD_POOL', 'DEV', 'ADMIN_PORT', 'DASHBOARD_TOKEN',
            'DRAIN_SECONDS', 'SHUTDOWN_TIMEOUT', 'KEEP_ALIVE_TIMEOUT', 'KEEP_ALIVE_LIMIT',
            'LOG_HEALTH_CHECKS', 'TRUST_PROXY', 'WORKERS', 'STATIC_MAX_AGE')

# The template as a user runs it, plus test-only pages under /t/. Depends on `run` and
# `cherrypy` only. Every request a /t/ page answers (but /t/id and /t/hits) is recorded, and
# /t/<anything else> answers too, so a smuggled request to any /t/ path is counted.
SERVER = """
import json, os, time, cherrypy, run
NAME = os.environ['PROXIES_INSTANCE']
HITS = []
any_method = cherrypy.tools.allow(methods=['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH'])
raw_body = cherrypy.config(**{'request.process_request_body': False})

def record():
    request = cherrypy.request
    body = request.rfile.read()  # the raw body as the server framed it (Content-Length or chunked)
    path = request.path_info + ('?' + request.query_string if request.query_string else '')
    HITS.append([request.method, path, body.decode('latin-1')])
    return path, body

class Test:
    @cherrypy.expose
    def id(self, **_):
        return NAME

    @cherrypy.expose
    def whoami(self, **_):
        return f'{cherrypy.request.remote.ip} {cherrypy.request.scheme}'

    @cherrypy.expose
    def spin(self, ms='20'):  # CPU work: a busy instance, as in production
        until = time.perf_counter() + float(ms) / 1000
        while time.perf_counter() < until:
            pass
        return NAME

    @cherrypy.expose
    def hits(self):
        cherrypy.response.headers['Content-Type'] = 'application/json'
        return json.dumps(HITS).encode()  # not text/*: the encode tool leaves it alone

    @cherrypy.expose
    @any_method
    @raw_body
    def echo(self, **_):
        path, body = record()
        return f'{NAME} echo {cherrypy.request.method} {path} body={len(body)}'

    @cherrypy.expose
    @any_method
    @raw_body
    def default(self, *_, **__):
        path, _ = record()
        return f'{NAME} other {cherrypy.request.method} {path}'

run.Landing.t = Test()
run.main()
"""


def free_port(taken=()):
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


# ---------------------------------------------------------------- processes

class Processes:
    """Every process started here: written to the PID file at once, stopped by PID."""

    def __init__(self, pid_file):
        self.pid_file, self.procs = pid_file, []

    def start(self, args, log_path, **kwargs):
        log = open(log_path, 'ab')
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, **kwargs)
        log.close()
        self.procs.append(proc)
        with open(self.pid_file, 'a') as f:
            f.write(f'{proc.pid}\n')
        return proc

    def stop(self, proc, sig=signal.SIGTERM, timeout=15):
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self):
        for proc in reversed(self.procs):
            self.stop(proc, timeout=5)


class Instance:
    """One template process in a slot (a, b): fixed ports, so a replacement takes its place."""

    def __init__(self, procs, work, slot, taken):
        self.procs, self.work, self.slot = procs, work, slot
        self.port = free_port(taken)
        taken.add(self.port)
        self.admin_port = free_port(taken)
        taken.add(self.admin_port)
        self.generation, self.proc, self.name = 0, None, None

    def start(self, python, keep_alive=65):
        self.generation += 1
        self.name = f'{self.slot}{self.generation}'
        env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
        env.update(HOST=HOST, PORT=str(self.port), ADMIN_PORT=str(self.admin_port),
                   DRAIN_SECONDS=str(DRAIN_SECONDS), SHUTDOWN_TIMEOUT=str(SHUTDOWN_TIMEOUT),
                   KEEP_ALIVE_TIMEOUT=str(keep_alive), TRUST_PROXY='1',
                   PROXIES_INSTANCE=self.name, PYTHONUNBUFFERED='1')
        self.proc = self.procs.start([python, '-c', SERVER], os.path.join(
            self.work, f'instance-{self.name}.log'), cwd=ROOT, env=env)
        return self.proc

    def log_tail(self, chars=1500):
        with open(os.path.join(self.work, f'instance-{self.name}.log'), 'rb') as f:
            return f.read().decode(errors='replace')[-chars:]


class Proxy:
    """nginx or HAProxy, from the template in .ci/proxies/ with its @@ placeholders filled in."""

    def __init__(self, kind, procs, work, listen, instances, **knobs):
        self.kind, self.procs, self.listen, self.knobs = kind, procs, listen, knobs
        self.dir = os.path.join(work, f'{kind}-{listen}')
        os.makedirs(self.dir, exist_ok=True)
        a, b = instances
        values = dict(DIR=self.dir, LISTEN=listen, PORT_A=a.port, PORT_B=b.port,
                      ADMIN_A=a.admin_port, ADMIN_B=b.admin_port, **knobs)
        name = 'nginx.conf' if kind == 'nginx' else 'haproxy.cfg'
        with open(os.path.join(TEMPLATES, name)) as f:
            text = f.read()
        for key, value in values.items():
            text = text.replace(f'@@{key}@@', str(value))
        leftover = re.findall(r'@@\w+@@', text)
        if leftover:
            raise ValueError(f'{name}: no value for {leftover}')
        self.conf = os.path.join(self.dir, name)
        with open(self.conf, 'w') as f:
            f.write(text)
        self.log = os.path.join(self.dir, 'nginx-access.log' if kind == 'nginx' else 'stdout.log')
        self.proc = None

    def start(self):
        if self.kind == 'nginx':
            args = ['nginx', '-e', os.path.join(self.dir, 'nginx-error.log'), '-p', self.dir,
                    '-c', self.conf]
        else:
            args = ['haproxy', '-db', '-f', self.conf]
        self.proc = self.procs.start(args, os.path.join(self.dir, 'stdout.log'))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection((HOST, self.listen), timeout=1).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self):
        # nginx: SIGQUIT is its graceful stop; HAProxy: SIGUSR1 (soft stop) would wait for clients.
        if self.proc:
            self.procs.stop(self.proc, signal.SIGQUIT if self.kind == 'nginx' else signal.SIGTERM)

    def lines(self):
        try:
            with open(self.log, errors='replace') as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def error_log(self):
        try:
            with open(os.path.join(self.dir, 'nginx-error.log'), errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''


# ---------------------------------------------------------------- HTTP on raw sockets

class Connection:
    """One HTTP/1.1 keep-alive client connection (asyncio streams), from CLIENT."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port, source=CLIENT):
        return cls(*await asyncio.open_connection(HOST, port, local_addr=(source, 0)))

    async def request(self, path, headers=(), method='GET'):
        """(status, headers, body, whether the connection stays open)."""
        lines = [f'{method} {path} HTTP/1.1', f'Host: {HOST}', *headers, '', '']
        self.writer.write('\r\n'.join(lines).encode())
        head = (await self.reader.readuntil(b'\r\n\r\n')).decode('latin-1').split('\r\n')
        fields = {}
        for line in head[1:]:
            if line:
                key, _, value = line.partition(':')
                fields[key.strip().lower()] = value.strip()
        if fields.get('transfer-encoding', '').lower() == 'chunked':
            body = b''
            while True:
                size = int((await self.reader.readuntil(b'\r\n')).split(b';')[0], 16)
                body += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            body = await self.reader.readexactly(int(fields.get('content-length', 0)))
        return (int(head[0].split()[1]), fields, body.decode('latin-1'),
                fields.get('connection', '').lower() != 'close')

    def close(self):
        self.writer.close()


FAILURES = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ValueError, IndexError, TimeoutError)


async def one_request(port, path, headers=(), source=CLIENT, timeout=5):
    async with asyncio.timeout(timeout):
        conn = await Connection.open(port, source)
        try:
            return await conn.request(path, headers)
        finally:
            conn.close()


async def http_get(port, path, timeout=2):
    """GET from the test driver's own address (127.0.0.1); (status, body) or (None, error)."""
    try:
        status, _, body, _ = await one_request(port, path, source=HOST, timeout=timeout)
        return status, body
    except FAILURES as error:
        return None, repr(error)


async def wait_ready(instance, limit=20):
    """Until the instance's admin port answers /healthcheck 200; seconds taken, or None."""
    started = time.monotonic()
    while time.monotonic() - started < limit and instance.proc.poll() is None:
        if (await http_get(instance.admin_port, '/healthcheck', timeout=1))[0] == 200:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


# ---------------------------------------------------------------- load

class Counts:
    def __init__(self):
        self.sent = self.ok = self.errors = self.fivexx = self.other = 0
        self.by_instance, self.statuses, self.first_seen, self.error_kinds = {}, {}, {}, {}

    def add(self, status, body):
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.ok += 1
            name = body.strip()
            self.by_instance[name] = self.by_instance.get(name, 0) + 1
            self.first_seen.setdefault(name, time.monotonic())
        elif status >= 500:
            self.fivexx += 1
        else:
            self.other += 1

    def error(self, error):
        self.errors += 1
        kind = type(error).__name__
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def load_client(port, counts, stop):
    """GET /t/id in a loop on a kept-alive connection until `stop` is set."""
    conn = None
    while not stop.is_set():
        counts.sent += 1
        try:
            async with asyncio.timeout(10):
                conn = conn or await Connection.open(port)
                status, _, body, keep = await conn.request('/t/id')
            counts.add(status, body)
            if not keep:
                conn = drop(conn)
        except FAILURES as error:
            counts.error(error)
            conn = drop(conn)
            await asyncio.sleep(0.05)
    drop(conn)


def drop(conn):
    if conn:
        conn.close()


# ---------------------------------------------------------------- scenarios

async def rolling_restart(proxy, instances, python, check):
    """Load through `proxy` while a, then b get SIGTERM and are replaced."""
    counts, stop = Counts(), asyncio.Event()
    clients = [asyncio.create_task(load_client(proxy.listen, counts, stop))
               for _ in range(LOAD_CLIENTS)]
    started = time.monotonic()
    restarts = []
    try:
        await asyncio.sleep(2)  # steady state first
        for instance in instances:
            old = instance.name
            t0 = time.monotonic()
            instance.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(instance.proc.wait, DRAIN_SECONDS + SHUTDOWN_TIMEOUT + 10)
            exited = time.monotonic() - t0
            instance.start(python)
            ready = await wait_ready(instance)
            restart = time.monotonic() - t0
            check(f'{proxy.kind}: {old} exits 0 after SIGTERM ({exited:.1f} s, drain '
                  f'{DRAIN_SECONDS} s) and its replacement {instance.name} is ready '
                  f'(SIGTERM to ready {restart:.1f} s)', code == 0 and ready is not None)
            await asyncio.sleep(SETTLE)  # the proxy takes it back in before the next SIGTERM
            first = counts.first_seen.get(instance.name)
            restarts.append({'old': old, 'new': instance.name, 'exited': exited,
                             'restart': restart,
                             'traffic': first - t0 if first else None})
        await asyncio.sleep(1)
    finally:
        stop.set()
        await asyncio.wait(clients, timeout=15)
    seconds = time.monotonic() - started
    new_names = [r['new'] for r in restarts]
    check(f'{proxy.kind} rolling restart: {counts.sent} requests, {counts.errors} failed, '
          f'{counts.fivexx} 5xx, {counts.other} other non-200 (answers by instance: '
          f'{counts.by_instance})',
          counts.errors == 0 and counts.fivexx == 0 and counts.other == 0 and counts.sent > 0)
    check(f'{proxy.kind}: both replacements ({", ".join(new_names)}) took traffic',
          all(counts.by_instance.get(name) for name in new_names))
    return {'proxy': proxy.kind, 'scenario': 'rolling restart', 'counts': counts,
            'seconds': seconds, 'restarts': restarts}


async def busy_client(port, stop):
    """Direct to an instance, CPU-bound requests in a loop: the instance's queue is rarely
    empty, so a request arriving on an idle connection waits for the selector."""
    conn = None
    while not stop.is_set():
        try:
            async with asyncio.timeout(10):
                conn = conn or await Connection.open(port, HOST)
                *_, keep = await conn.request(f'/t/spin?ms={BUSY_MS}')
            if not keep:
                conn = drop(conn)
        except FAILURES:
            conn = drop(conn)
            await asyncio.sleep(0.05)
    drop(conn)


async def race(proxy, instances, label, check, expect_zero):
    """Bursts of RACE_CLIENTS requests spaced around the instances' keep-alive timeout, so the
    proxy reuses a connection just as the instance closes it, while each instance is kept
    busy by BUSY_CLIENTS direct clients."""
    counts, stop = Counts(), asyncio.Event()
    busy = [asyncio.create_task(busy_client(instance.port, stop))
            for instance in instances for _ in range(BUSY_CLIENTS)]
    conns = [None] * RACE_CLIENTS
    lines_before = len(proxy.lines())
    started = time.monotonic()

    async def one(i):
        counts.sent += 1
        try:
            async with asyncio.timeout(10):
                conns[i] = conns[i] or await Connection.open(proxy.listen)
                status, _, body, keep = await conns[i].request('/t/id')
            counts.add(status, body)
            if not keep:
                conns[i] = drop(conns[i])
        except FAILURES as error:
            counts.error(error)
            conns[i] = drop(conns[i])

    try:
        await asyncio.gather(*(one(i) for i in range(RACE_CLIENTS)))  # fills the proxy's pool
        for k in range(RACE_BURSTS):
            # Spaced 1.9-2.6 s (a golden-ratio sweep): around KEEP_ALIVE_TIMEOUT=2 plus the
            # server's 0.5 s expiry tick, so some bursts land as the instance closes.
            await asyncio.sleep(RACE_KEEP_ALIVE - 0.1 + 0.7 * ((k * 0.618) % 1))
            await asyncio.gather(*(one(i) for i in range(RACE_CLIENTS)))
    finally:
        stop.set()
        await asyncio.wait(busy, timeout=15)
        for conn in conns:
            drop(conn)
    lines = proxy.lines()[lines_before:]
    if proxy.kind == 'nginx':
        retried = sum(',' in line.rsplit('"', 2)[-2] for line in lines if line.count('"') >= 2)
        upstream_errors = len(re.findall(r'upstream prematurely closed|Connection reset by peer|'
                                         r'Broken pipe', proxy.error_log()))
    else:
        fields = [line.split() for line in lines]
        retried = sum(1 for f in fields if len(f) >= 4 and f[3].lstrip('+').isdigit()
                      and int(f[3].lstrip('+')) > 0)
        # Termination state: "S..." the server aborted or refused; "SH": closed before headers.
        upstream_errors = sum(1 for f in fields if len(f) >= 5 and f[4][:1] == 'S')
        upstream_errors += sum(1 for f in fields if len(f) >= 5 and f[1] != '200'
                               and f[4][:1] not in ('S', 'C'))
    row = {'proxy': proxy.kind, 'scenario': label, 'counts': counts,
           'seconds': time.monotonic() - started, 'retried': retried,
           'upstream_errors': upstream_errors}
    bad = counts.errors + counts.fivexx + counts.other
    summary = (f'{proxy.kind} {label}: {counts.sent} requests, {counts.fivexx} 5xx, '
               f'{counts.errors} failed, {retried} retried by the proxy, '
               f'{upstream_errors} upstream errors in its log')
    if expect_zero:
        check(summary, bad == 0 and counts.sent > 0)
    else:
        print(f'info {summary}', flush=True)
    return row


async def trust_proxy(proxies, instances, check):
    """The app sees the address the proxy appended and the proxy's scheme."""
    rows = []
    cases = [('no forwarding headers from the client', ()),
             ('client sends X-Forwarded-For and -Proto', (f'X-Forwarded-For: {SPOOFED}',
                                                          'X-Forwarded-Proto: https')),
             ('client sends two X-Forwarded-For lines', (f'X-Forwarded-For: {SPOOFED}',
                                                         'X-Forwarded-For: 198.51.100.7',
                                                         'X-Forwarded-Proto: https')),
             # One WSGI name with X-Forwarded-For: HAProxy merges its own into the client's
             # line above, so this one came later and replaced it.
             ('client sends X-Forwarded-For and X_Forwarded_For', (
                 'X-Forwarded-For: 198.51.100.7', f'X_Forwarded_For: {SPOOFED}',
                 'X_Forwarded_Proto: https'))]
    for proxy in proxies:
        for name, headers in cases:
            seen = set()
            for _ in range(4):  # both instances, round-robin
                try:
                    status, _, body, _ = await one_request(proxy.listen, '/t/whoami', headers)
                    seen.add(body if status == 200 else f'HTTP {status}')
                except FAILURES as error:
                    seen.add(repr(error))
            check(f'{proxy.kind}, {name}: the app sees {sorted(seen)} (want '
                  f"['{CLIENT} http'])", seen == {f'{CLIENT} http'})
            rows.append((proxy.kind, name, ', '.join(sorted(seen))))
    # Direct, no proxy: what the README warns about (informational).
    for name, headers in cases[:2]:
        try:
            status, _, body, _ = await one_request(instances[0].port, '/t/whoami', headers)
        except FAILURES as error:
            body = repr(error)
        print(f'info direct to an instance (no proxy), {name}: the app sees {body!r}')
        rows.append(('none (direct)', name, body))
    return rows


# ------------------------------------------------------------ request smuggling

def attacks(marker):
    """(name, raw bytes): each would hide GET /t/smuggled?a=<marker> from a proxy that
    reads the message one way while the server behind it reads it another way."""
    front = f'/t/echo?a={marker}'
    smuggled = f'GET /t/smuggled?a={marker} HTTP/1.1\r\nHost: {HOST}\r\n\r\n'
    head = f'POST {front} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: text/plain\r\n'
    te_end = '0\r\n\r\n' + smuggled   # chunked: ends at "0"; by Content-Length: goes on
    inner = '0\r\n\r\n' + smuggled
    return [
        ('CL.TE: Content-Length and Transfer-Encoding: chunked',
         head + f'Content-Length: {len(te_end)}\r\nTransfer-Encoding: chunked\r\n\r\n' + te_end),
        ('TE.CL: chunked body, Content-Length: 4',
         head + 'Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n'
         + f'{len(smuggled):x}\r\n{smuggled}\r\n0\r\n\r\n'),
        ('two Content-Length (0 and the length)',
         head + f'Content-Length: 0\r\nContent-Length: {len(smuggled)}\r\n\r\n' + smuggled),
        ('two Content-Length (the length and 0)',
         head + f'Content-Length: {len(smuggled)}\r\nContent-Length: 0\r\n\r\n' + smuggled),
        ('"Transfer-Encoding : chunked" (space before the colon) and Content-Length',
         head + f'Content-Length: {len(te_end)}\r\nTransfer-Encoding : chunked\r\n\r\n' + te_end),
        ('"Transfer-Encoding: xchunked" and Content-Length',
         head + f'Content-Length: {len(te_end)}\r\nTransfer-Encoding: xchunked\r\n\r\n' + te_end),
        ('"Transfer-Encoding: chunked, identity" and Content-Length',
         head + f'Content-Length: {len(te_end)}\r\nTransfer-Encoding: chunked, identity\r\n\r\n'
         + te_end),
        ('Transfer-Encoding with a tab and a second Transfer-Encoding: identity',
         head + f'Content-Length: {len(te_end)}\r\nTransfer-Encoding:\tchunked\r\n'
         f'Transfer-Encoding: identity\r\n\r\n' + te_end),
        ('chunk extension "0;GET /t/smuggled ..." (request line in the last chunk)',
         head + 'Transfer-Encoding: chunked\r\n\r\n' + f'0;{smuggled}'),
        ('chunk extension ended by a bare LF ("2;\\nxx")',
         head + 'Transfer-Encoding: chunked\r\n\r\n'
         + f'2;\nxx\r\n{len(inner):x}\r\n{inner}\r\n0\r\n\r\n'),
        ('GET with a body (Content-Length) holding a request',
         f'GET {front} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {len(smuggled)}\r\n\r\n'
         + smuggled),
    ]


def raw_exchange(port, data, idle=0.6, limit=3.0):
    """Send raw bytes on a new connection; read until the peer closes or is idle `idle` s."""
    got = b''
    with socket.create_connection((HOST, port), timeout=idle) as sock:
        sock.sendall(data.encode('latin-1'))
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return re.findall(rb'HTTP/1\.[01] (\d{3})', got)


async def server_hits(instances):
    """Every request the instances' /t/ pages answered: (instance, method, path, body)."""
    hits = []
    for instance in instances:
        status, body = await http_get(instance.port, '/t/hits')
        if status != 200:  # never read "no answer" as "nothing reached the app"
            raise RuntimeError(f'{instance.name} /t/hits answered {status}: {body[:200]}')
        hits += [(instance.name, *hit) for hit in json.loads(body)]
    return hits


async def smuggling(targets, instances, check):
    """targets: [(label, port, proxy or None)]. Through a proxy, a request an instance answered
    that the proxy never logged is smuggled; direct (informational), any /t/smuggled is."""
    rows, counter = [], 0
    for label, port, proxy in targets:
        for name, data in attacks('x'):
            counter += 1
            marker = f'{counter}z'  # unique per attack and target; "z" so 1z is not in 11z
            payload = dict(attacks(marker))[name]
            before = len(proxy.lines()) if proxy else 0
            statuses = await asyncio.to_thread(raw_exchange, port, payload)
            # The next users: new client connections, which the proxy serves on the kept
            # upstream connections the attack went through (two per instance, round-robin).
            victims = []
            for v in range(4):
                want = f'/t/echo?victim={marker}-{v}'
                try:
                    status, _, body, _ = await one_request(port, want)
                    victims.append(status == 200 and f'echo GET {want} ' in body)
                except FAILURES:
                    victims.append(False)
            await asyncio.sleep(0.2)  # HAProxy logs when the stream ends
            seen = [h for h in await server_hits(instances) if f'a={marker}' in h[2]]
            logged = [line for line in (proxy.lines()[before:] if proxy else [])
                      if f'a={marker}' in line]
            smuggled = [h for h in seen if '/t/smuggled' in h[2]
                        and not any('/t/smuggled' in line for line in logged)]
            ok = not smuggled and all(victims)
            text = (f'{label}: {name}: answers {[int(s) for s in statuses]}, reached the app '
                    f'{[h[1] + " " + h[2] for h in seen]}, smuggled {len(smuggled)}, '
                    f'next users answered correctly {sum(victims)}/4')
            if proxy:
                check(text, ok)
            else:
                print(f'{"info" if ok else "INFO FAIL"} {text}', flush=True)
            rows.append((label, name, ' '.join(s.decode() for s in statuses) or 'none',
                         len(seen), len(smuggled), f'{sum(victims)}/4', ok))
    return rows


# ---------------------------------------------------------------- report

def print_tables(rolling, races, trust, smuggle):
    print('\n### Rolling restart under load\n')
    print(f'{LOAD_CLIENTS} keep-alive clients through the proxy, GET /t/id in a loop; a, then '
          f'b get SIGTERM (DRAIN_SECONDS={DRAIN_SECONDS}) and are replaced on the same ports.\n')
    print('| proxy | requests | failed | 5xx | other non-200 | seconds | restart a: SIGTERM to '
          'ready (to first answer via proxy) | restart b | answers by instance |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for row in rolling:
        c = row['counts']
        restarts = [f'{r["restart"]:.1f} s ({r["traffic"]:.1f} s)' if r['traffic'] is not None
                    else f'{r["restart"]:.1f} s (none)' for r in row['restarts']]
        restarts += ['–'] * (2 - len(restarts))
        print(f'| {row["proxy"]} | {c.sent} | {c.errors} | {c.fivexx} | {c.other} | '
              f'{row["seconds"]:.0f} | {restarts[0]} | {restarts[1]} | '
              f'{", ".join(f"{k} {v}" for k, v in sorted(c.by_instance.items()))} |')
    print(f'\n### Keep-alive race (instances with KEEP_ALIVE_TIMEOUT={RACE_KEEP_ALIVE})\n')
    print(f'{RACE_BURSTS + 1} bursts of {RACE_CLIENTS} requests, spaced 1.9–2.6 s.\n')
    print('| proxy | upstream idle timeout, retries | requests | failed | 5xx | retried by '
          'the proxy | upstream errors in its log |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for row in races:
        c = row['counts']
        print(f'| {row["proxy"]} | {row["scenario"]} | {c.sent} | {c.errors} | {c.fivexx} | '
              f'{row["retried"]} | {row["upstream_errors"]} |')
    print(f'\n### TRUST_PROXY=1 (client at {CLIENT}, spoofed address {SPOOFED})\n')
    print('| proxy | request | the app sees (remote.ip scheme) |\n| --- | --- | --- |')
    for proxy, name, seen in trust:
        print(f'| {proxy} | {name} | {seen} |')
    print('\n### Request smuggling\n')
    print('| target | attack | status codes returned | requests reaching the app | smuggled '
          '| next users OK | verdict |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for label, name, statuses, seen, smuggled, victims, ok in smuggle:
        print(f'| {label} | {name} | {statuses} | {seen} | {smuggled} | {victims} | '
              f'{"ok" if ok else "FAIL" if "direct" not in label else "smuggled (info)"} |')
    print()


async def scenario(args, procs, check):
    taken = set()
    instances = [Instance(procs, args.work, slot, taken) for slot in 'ab']
    for instance in instances:
        instance.start(args.python)
    for instance in instances:
        waited = await wait_ready(instance)
        if not check(f'instance {instance.name} ready on its admin port '
                     f'({waited if waited is None else round(waited, 2)} s)', waited is not None):
            print(instance.log_tail())
            return None
    nginx_port = free_port(taken)
    taken.add(nginx_port)
    haproxy_port = free_port(taken)
    taken.add(haproxy_port)
    recommended_nginx = dict(UPSTREAM_IDLE='1s', NEXT_UPSTREAM='error timeout')
    recommended_haproxy = dict(POOL_PURGE='1s', RETRIES=2,
                               RETRY_ON='conn-failure empty-response response-timeout',
                               REDISPATCH='option redispatch')
    nginx = Proxy('nginx', procs, args.work, nginx_port, instances, **recommended_nginx)
    haproxy = Proxy('haproxy', procs, args.work, haproxy_port, instances, **recommended_haproxy)
    for proxy in (nginx, haproxy):
        if not check(f'{proxy.kind} starts and listens on {HOST}:{proxy.listen}', proxy.start()):
            print(open(os.path.join(proxy.dir, 'stdout.log'), errors='replace').read()[-2000:])
            print(proxy.error_log()[-2000:])
            return None
    await asyncio.sleep(1.5)  # HAProxy: 2 passing checks 500 ms apart before "UP"

    trust = smuggle = rolling = races = ()
    if 'trust' in args.only:
        print('== c. TRUST_PROXY=1 behind the real proxies', flush=True)
        trust = await trust_proxy([nginx, haproxy], instances, check)
    if 'smuggle' in args.only:
        print('== d. request smuggling through the proxies (and, informational, direct)',
              flush=True)
        smuggle = await smuggling([('nginx', nginx.listen, nginx),
                                   ('haproxy', haproxy.listen, haproxy),
                                   ('instance (direct)', instances[0].port, None)],
                                  instances, check)
    if 'rolling' in args.only:
        print('== a. rolling restart under load', flush=True)
        rolling = [await rolling_restart(nginx, instances, args.python, check)]
        await asyncio.sleep(1.5)
        rolling.append(await rolling_restart(haproxy, instances, args.python, check))
    nginx.stop()
    haproxy.stop()
    if 'race' not in args.only:
        for instance in instances:
            procs.stop(instance.proc, timeout=DRAIN_SECONDS + SHUTDOWN_TIMEOUT + 10)
        return rolling, races, trust, smuggle

    print(f'== b. keep-alive race: instances restarted with KEEP_ALIVE_TIMEOUT={RACE_KEEP_ALIVE}',
          flush=True)
    for instance in instances:
        procs.stop(instance.proc)
        instance.start(args.python, keep_alive=RACE_KEEP_ALIVE)
    for instance in instances:
        check(f'instance {instance.name} (KEEP_ALIVE_TIMEOUT={RACE_KEEP_ALIVE}) ready',
              await wait_ready(instance) is not None)
    variants = [
        ('nginx', f'1s (< {RACE_KEEP_ALIVE} s), retries on (recommended)', recommended_nginx, True),
        ('nginx', f'10s (> {RACE_KEEP_ALIVE} s), retries off', dict(
            UPSTREAM_IDLE='10s', NEXT_UPSTREAM='off'), False),
        ('nginx', f'10s (> {RACE_KEEP_ALIVE} s), retries on', dict(
            UPSTREAM_IDLE='10s', NEXT_UPSTREAM='error timeout'), False),
        ('haproxy', 'pool-purge-delay 1s, retry-on empty-response (recommended)',
         recommended_haproxy, True),
        ('haproxy', 'pool-purge-delay 10s, retries 0, no redispatch', dict(
            POOL_PURGE='10s', RETRIES=0, RETRY_ON='none', REDISPATCH='no option redispatch'),
         False),
    ]
    races = []
    for kind, label, knobs, expect_zero in variants:
        proxy = Proxy(kind, procs, args.work, free_port(taken), instances, **knobs)
        if check(f'{kind} ({label}) starts', proxy.start()):
            await asyncio.sleep(1.5 if kind == 'haproxy' else 0.2)
            races.append(await race(proxy, instances, label, check, expect_zero))
        proxy.stop()
    for instance in instances:
        code = procs.stop(instance.proc, timeout=DRAIN_SECONDS + SHUTDOWN_TIMEOUT + 10)
        check(f'instance {instance.name} exits 0 on SIGTERM (exit code {code})', code == 0)
    return rolling, races, trust, smuggle


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--python', default=sys.executable, help="the app's Python (its venv)")
    parser.add_argument('--work', required=True, help='a folder for configs and logs')
    parser.add_argument('--pids', required=True, help='file: every PID started, one a line')
    parser.add_argument('--only', default='trust,smuggle,rolling,race',
                        help='comma-separated scenarios to run (default: all)')
    parser.add_argument('--limit', type=float, default=300, help='whole run, seconds')
    args = parser.parse_args()
    for tool in ('nginx', 'haproxy'):
        if not shutil.which(tool):
            print(f'FAIL {tool} is not installed (.ci/proxies.sh installs it)\n0 passed, 1 failed')
            return 1
    results = []

    def check(name, ok):
        results.append(bool(ok))
        print(f'{"ok  " if ok else "FAIL"} {name}', flush=True)
        return ok

    procs = Processes(args.pids)
    started, tables = time.monotonic(), None

    async def bounded():
        async with asyncio.timeout(args.limit):
            return await scenario(args, procs, check)
    try:
        tables = asyncio.run(bounded())
    except TimeoutError:
        check(f'whole run within {args.limit:.0f} s', False)
    except Exception as error:  # a bug here or a dead process: still report and stop them
        check(f'run to the end ({error!r})', False)
        import traceback
        traceback.print_exc()
    finally:
        procs.stop_all()
    if tables:
        print_tables(*tables)
    print(f'Whole run: {time.monotonic() - started:.0f} s')
    print(f'{results.count(True)} passed, {results.count(False)} failed')
    return 1 if False in results else 0


if __name__ == '__main__':
    sys.exit(main())
