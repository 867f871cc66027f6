"""Load-balancer simulation: do health probes answer while every worker is busy? (issue 4)

Starts the real server (`run.main()`, THREAD_POOL=100 as shipped) with a test-only slow
page, keeps every main worker busy with 2 s requests while other clients load "/", and
probes it the way an ELB or the kubelet does: each probe client holds one keep-alive
connection and sends GET /healthcheck every 100 ms with Kubernetes' default 1 s timeout.

    phase A   20 probe clients, admin port    must not fail
    phase B  200 probe clients, admin port    must not fail
    phase M   20 probe clients, main port     informational: probes wait behind slow requests
    phase C  500 idle connections open; fresh probes and pages: under 1 s (target 100 ms)

Prints Markdown tables and "N passed, N failed"; exits 1 if a check fails. About 35 s.
Run it with .ci/elb-sim.sh (the project's Python, a higher open-files limit).

The clients are asyncio streams in this one process: 350+ connections without 350 threads.
The generator's own lag (a timer's scheduled vs actual wake-up, which every send and read
here waits behind) is reported, and so is the CPU that other processes took meanwhile:
on a shared machine that, not the server, can be what slows the probes.
"""
import asyncio
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from server import settings  # noqa: E402  (only for the names of the server's environment variables)

HOST = '127.0.0.1'
THREAD_POOL = 100             # as shipped in prod.conf
SLOW_SECONDS = 2.0            # one slow request: a dashboard waiting on an API
SLOW_CLIENTS = THREAD_POOL + 20  # more than the workers, so none is ever idle
PAGE_CLIENTS = 10             # visitors loading "/" meanwhile
PROBE_PERIOD = 0.1            # the probe interval
PROBE_TIMEOUT = 1.0           # Kubernetes' default probe timeoutSeconds
PHASE_SECONDS = 8.0
IDLE_CONNECTIONS = 500        # pre-opened by a balancer and left idle
FRESH_TRIES = 5               # fresh probes and fresh pages measured in phase C
FRESH_TARGET = 0.1            # issue 4's target with idle connections open
RUN_LIMIT = 80.0              # the whole simulation, seconds: CI must never hang here
YAY = b'Yay<br />\n'

# The server as a user runs it, plus two test-only pages: a slow one (as SLOW_SERVER in
# test.py) and, on the admin port, the main pool's idle workers and queue length.
SERVER = """
import time, cherrypy, run
from server import probes
run.Landing.slow = cherrypy.expose(lambda self, s='1': time.sleep(float(s)) or 'done')
pool = lambda: cherrypy.server.httpserver.requests
probes.AdminRoot.pool = cherrypy.expose(lambda self: f'{pool().idle} {pool().qsize}')
run.main()
"""


class Connection:
    """One HTTP/1.1 keep-alive connection on raw asyncio streams (the stdlib has no async client)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port):
        return cls(*await asyncio.open_connection(HOST, port))

    async def get(self, path):
        """Send GET path; return (status, body, whether the server keeps the connection)."""
        self.writer.write(f'GET {path} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: elb-sim\r\n\r\n'
                          .encode())
        head = (await self.reader.readuntil(b'\r\n\r\n')).decode('latin-1').split('\r\n')
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in
                       (line.partition(':') for line in head[1:] if line))
        body = await self.reader.readexactly(int(headers['content-length']))
        return int(head[0].split()[1]), body, headers.get('connection', '').lower() != 'close'

    def close(self):
        self.writer.close()


# Refused or reset, closed mid-answer, or an answer that is not HTTP.
FAILURES = (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            KeyError, ValueError, IndexError)


class Probes:
    """What one phase's probe clients saw."""

    def __init__(self):
        self.latencies = []   # seconds; math.inf for a probe that timed out
        self.timeouts = self.errors = self.bad = self.reconnects = 0
        self.lags = []        # generator lateness: actual minus scheduled wake-up, seconds

    @property
    def failures(self):
        return self.timeouts + self.errors + self.bad


async def probe_client(port, stats, start, stop):
    """A balancer node: one kept-alive connection, GET /healthcheck every PROBE_PERIOD."""
    conn, opened, due = None, False, start
    while due < stop:
        if time.monotonic() < due:
            await asyncio.sleep(due - time.monotonic())
            stats.lags.append(time.monotonic() - due)
        sent = time.monotonic()  # if the last answer came after `due`, send at once
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):  # connecting counts, as for the kubelet
                if conn is None:
                    stats.reconnects += opened
                    conn, opened = await Connection.open(port), True
                status, body, keep = await conn.get('/healthcheck')
            stats.latencies.append(time.monotonic() - sent)
            stats.bad += (status, body) != (200, YAY)
            conn = conn if keep else drop(conn)
        except TimeoutError:
            stats.timeouts += 1
            stats.latencies.append(math.inf)
            conn = drop(conn)  # its late answer may still come: never reuse it
        except FAILURES:
            stats.errors += 1
            conn = drop(conn)
        due = max(due + PROBE_PERIOD, time.monotonic())  # one probe at a time per connection
    drop(conn)


def drop(conn):
    """Close a connection if there is one; returns None, to write `conn = drop(conn)`."""
    if conn:
        conn.close()


async def load_client(port, path, counts, key, delay):
    """Loads `path` in a loop on a kept-alive connection until cancelled."""
    await asyncio.sleep(delay)
    conn = None
    try:
        while True:
            try:
                async with asyncio.timeout(30):
                    conn = conn or await Connection.open(port)
                    status, _, keep = await conn.get(path)
                counts[key if status == 200 else 'errors'] += 1
                conn = conn if keep else drop(conn)
            except (TimeoutError, *FAILURES):
                counts['errors'] += 1
                conn = drop(conn)
                await asyncio.sleep(0.1)
    finally:
        drop(conn)


async def lag_monitor(lags):
    """Until cancelled: how late this generator wakes up for a timer due every 10 ms."""
    while True:
        due = time.monotonic() + 0.01
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - due)


async def pool_sampler(admin_port, pool):
    """Until cancelled: the main pool's idle workers and queue length, every 0.2 s."""
    conn = None
    try:
        while True:
            try:
                async with asyncio.timeout(5):
                    conn = conn or await Connection.open(admin_port)
                    _, body, _ = await conn.get('/pool')
                pool.append(tuple(map(int, body.split())))  # (idle workers, queued)
            except (TimeoutError, *FAILURES):
                conn = drop(conn)
            await asyncio.sleep(0.2)
    finally:
        drop(conn)


async def probe_phase(name, clients, port, admin_port, seconds, counts, server_pid):
    stats, pool, before = Probes(), [], dict(counts)
    watchers = [asyncio.create_task(lag_monitor(stats.lags)),
                asyncio.create_task(pool_sampler(admin_port, pool))]
    cpu = cpu_seconds(server_pid)
    start = time.monotonic() + 0.2
    # Clients start spread over one period, as independent balancer nodes do.
    await asyncio.gather(*(probe_client(port, stats, start + PROBE_PERIOD * i / clients,
                                        start + seconds) for i in range(clients)))
    for task in watchers:
        task.cancel()
    await asyncio.wait(watchers, timeout=1)
    used = [after - first for after, first in zip(cpu_seconds(server_pid), cpu)]
    wall = used.pop()
    return {'phase': name, 'clients': clients, 'stats': stats, 'pool': pool,
            'scheduled': round(clients * seconds / PROBE_PERIOD),
            'pages': counts['page'] - before['page'], 'slow': counts['slow'] - before['slow'],
            'load_errors': counts['errors'] - before['errors'],
            'server_cpu': used[0] / wall, 'gen_cpu': used[1] / wall,
            'other_cpu': (used[2] - used[0] - used[1]) / wall}


def cpu_seconds(server_pid):
    """CPU seconds used so far by the server, this generator and the whole machine; wall time."""
    tick = os.sysconf('SC_CLK_TCK')
    with open(f'/proc/{server_pid}/stat') as stat:
        fields = stat.read().rsplit(')', 1)[1].split()
    with open('/proc/stat') as stat:
        machine = [int(n) for n in stat.readline().split()[1:9]]
    busy = sum(machine) - machine[3] - machine[4]  # all but idle and iowait
    return (int(fields[11]) + int(fields[12])) / tick, time.process_time(), busy / tick, \
        time.monotonic()


async def fresh_requests(port):
    """Phase C: idle pre-opened connections must not keep a fresh probe or page waiting."""
    idle, results = [], {'/healthcheck': [], '/': []}
    try:
        async with asyncio.timeout(10):
            for _ in range(IDLE_CONNECTIONS):
                idle.append(await Connection.open(port))
        await asyncio.sleep(1)  # the server has accepted them all by now
        for _ in range(FRESH_TRIES):
            for path, times in results.items():
                started = time.monotonic()
                try:
                    async with asyncio.timeout(5):
                        conn = await Connection.open(port)
                        status, _, _ = await conn.get(path)
                    conn.close()
                    times.append(time.monotonic() - started if status == 200 else math.inf)
                except (TimeoutError, *FAILURES):
                    times.append(math.inf)
        still_open = sum(not c.reader.at_eof() for c in idle)
    finally:
        for conn in idle:
            conn.close()
    return results, still_open


async def wait_ready(port, proc, limit=20):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            async with asyncio.timeout(1):
                conn = await Connection.open(port)
                status, _, _ = await conn.get('/healthcheck')
            conn.close()
            if status == 200:
                return True
        except (TimeoutError, *FAILURES):
            pass
        await asyncio.sleep(0.1)
    return False


def check_phase(row, check):
    """The checks of one probe phase: the load did its job, and admin-port probes never failed."""
    # Saturated: in every sample, requests wait for a worker or (almost) none is idle. Under
    # production.PacedQueue a few threads can sleep while requests queue at full CPU.
    pool = row['pool']
    saturated = [queued > 0 or idle <= 1 for idle, queued in pool]
    check(f'{row["phase"]}: main pool saturated (requests queued or no idle worker in '
          f'{sum(saturated)} of {len(pool)} samples; idle max '
          f'{max((idle for idle, _ in pool), default=-1)}, queued min '
          f'{min((queued for _, queued in pool), default=-1)})', bool(pool) and all(saturated))
    check(f'{row["phase"]}: "/" served meanwhile ({row["pages"]} pages, '
          f'{row["load_errors"]} errors)', row['pages'] > 0 and row['load_errors'] == 0)
    if row['phase'].startswith(('A', 'B')):
        stats = row['stats']
        check(f'{row["phase"]}: {len(stats.latencies)} probes, none failed '
              f'({stats.timeouts} timeouts, {stats.errors} errors, {stats.bad} not 200)',
              stats.failures == 0 and len(stats.latencies) > 0)


async def simulate(port, admin_port, proc, check):
    if not check('server ready on the admin port within 20 s', await wait_ready(admin_port, proc)):
        return []
    counts = {'slow': 0, 'page': 0, 'errors': 0}
    load = [asyncio.create_task(load_client(port, f'/slow?s={SLOW_SECONDS}', counts, 'slow',
                                            SLOW_SECONDS * i / SLOW_CLIENTS))
            for i in range(SLOW_CLIENTS)]  # spread over one sleep, so they do not end together
    load += [asyncio.create_task(load_client(port, '/', counts, 'page', 0))
             for _ in range(PAGE_CLIENTS)]
    await asyncio.sleep(SLOW_SECONDS + 0.5)  # every worker is sleeping now
    rows = []
    try:
        for name, clients, probe_port, seconds in (
                ('A: admin port', 20, admin_port, PHASE_SECONDS),
                ('B: admin port', 200, admin_port, PHASE_SECONDS),
                ('M: main port (info)', 20, port, PHASE_SECONDS * 0.75)):
            rows.append(await probe_phase(name, clients, probe_port, admin_port, seconds,
                                          counts, proc.pid))
            check_phase(rows[-1], check)
    finally:
        for task in load:
            task.cancel()
        await asyncio.wait(load, timeout=5)
    await asyncio.sleep(SLOW_SECONDS + 0.5)  # slow requests still running finish
    fresh, still_open = await fresh_requests(port)
    for path, times in fresh.items():
        worst = max(times)
        check(f'C: fresh GET {path} with {IDLE_CONNECTIONS} idle connections open: max '
              f'{ms(worst)} ms (target {FRESH_TARGET * 1000:.0f} ms '
              f'{"met" if worst < FRESH_TARGET else "MISSED"}; bound {PROBE_TIMEOUT:.0f} s)',
              worst < PROBE_TIMEOUT)
    rows.append({'phase': 'C', 'fresh': fresh, 'still_open': still_open})
    return rows


def percentile(values, p):
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else math.nan


def ms(seconds):
    return 'timeout' if seconds == math.inf else f'{seconds * 1000:.1f}'


def print_tables(rows):
    print('\n| phase | probe clients | probes sent (scheduled) | failed (timeout/error/non-200) | reconnects '
          '| p50 ms | p99 ms | max ms | generator lag p99/max ms | main pool idle/queued (mean) '
          '| `/` done | slow done | CPU server/generator/others |')
    print('|' + ' --- |' * 13)
    for row in rows:
        if 'stats' not in row:
            continue
        s, pool = row['stats'], row['pool'] or [(math.nan, math.nan)]
        idle, queued = (sum(column) / len(pool) for column in zip(*pool))
        print(f'| {row["phase"]} | {row["clients"]} | {len(s.latencies)} ({row["scheduled"]}) '
              f'| {s.failures} '
              f'({s.timeouts}/{s.errors}/{s.bad}) | {s.reconnects} '
              f'| {ms(percentile(s.latencies, 50))} | {ms(percentile(s.latencies, 99))} '
              f'| {ms(max(s.latencies, default=0))} '
              f'| {ms(percentile(s.lags, 99))}/{ms(max(s.lags, default=0))} '
              f'| {idle:.1f}/{queued:.0f} | {row["pages"]} | {row["slow"]} '
              f'| {row["server_cpu"]:.0%}/{row["gen_cpu"]:.0%}/{row["other_cpu"]:.0%} |')
    for row in rows:
        if 'fresh' in row:
            print(f'\nPhase C: {IDLE_CONNECTIONS} idle connections open ({row["still_open"]} '
                  f'still open at the end); {FRESH_TRIES} fresh requests of each kind, each on '
                  f'a new connection (target {FRESH_TARGET * 1000:.0f} ms)\n')
            print('| request | p50 ms | max ms |\n| --- | --- | --- |')
            for path, times in row['fresh'].items():
                print(f'| GET {path} | {ms(percentile(times, 50))} | {ms(max(times))} |')
    print('\nA client sends its next probe only after the last answer, as a kubelet does, so '
          'slow answers mean fewer probes than scheduled.\nCPU: share of one core; "others" is '
          f'every other process on the machine ({os.cpu_count()} cores), as on a shared machine.\n')


async def bounded(coroutine, seconds):
    async with asyncio.timeout(seconds):
        return await coroutine


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main():
    results = []

    def check(name, ok):
        results.append(ok)
        print(f'{"ok  " if ok else "FAIL"} {name}', flush=True)
        return ok

    port, admin_port = free_port(), free_port()
    while admin_port == port:  # two bind-to-0 calls can return the same port
        admin_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in settings.VARIABLES}  # as shipped
    env.update(HOST=HOST, PORT=str(port), ADMIN_PORT=str(admin_port), THREAD_POOL=str(THREAD_POOL))
    log = tempfile.TemporaryFile()  # the access log: a line per page; shown only on failure
    proc = subprocess.Popen([sys.executable, '-c', SERVER], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    started, rows = time.monotonic(), []
    try:
        rows = asyncio.run(bounded(simulate(port, admin_port, proc, check), RUN_LIMIT))
    except TimeoutError:
        check(f'simulation within {RUN_LIMIT:.0f} s', False)
    except Exception as error:  # a bug here or a dead server: still report and stop it
        check(f'simulation ran to the end ({error!r})', False)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        check(f'server exits 0 on SIGTERM (exit code {code})', code == 0)
    print_tables(rows)
    print(f'Whole run: {time.monotonic() - started:.0f} s')
    failed = results.count(False)
    if failed:
        log.seek(0)
        print('Server output, last lines:\n' + log.read().decode(errors='replace')[-2000:])
    print(f'{results.count(True)} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
