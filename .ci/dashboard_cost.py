"""The cost of counting: "/" throughput with the dashboard's counters and without, in one run.

    python .ci/dashboard_cost.py       # about a minute; needs wrk (apt-get install wrk)

Three servers run side by side on loopback; wrk loads one at a time, alternating
A B C A B C... so that drift of the machine hits every variant alike. Prints medians of
throughput and of the server's CPU time per request (from /proc).

Then, in this process and without sockets, the same WSGI request for "/" through CherryPy
with tools.count on and off, alternating request by request, each timed in CPU time:
other work on the machine moves both alike, so this shows the cost of counting when
wrk's spread hides it.
  A  counters on: `python run.py` as shipped
  B  counters off: the same run.py with dashboard.install replaced by a no-op
     (no tool, no pages: exactly what deleting the feature leaves)
  C  counters on, and cheroot's own server.statistics on (what the dashboard does without)
"""
import io
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get('ROUNDS', 3))
WRK = ['wrk', '-t2', '-c50', '-d5s']
VARIANTS = {
    'A counters on': 'import run; run.main()',
    'B counters off': 'import run; from server import dashboard; dashboard.install = lambda *a: None; run.main()',
    'C counters + server.statistics': ('import cherrypy, run; cherrypy.server.statistics = True; '
                                       'run.main()'),
}


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def start(code):
    port = free_port()
    env = dict(os.environ, HOST='127.0.0.1', PORT=str(port), ADMIN_PORT='0')
    proc = subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f'http://127.0.0.1:{port}/healthcheck', timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f'server did not start: {code}')


def in_process(calls=20000):
    """Median CPU microseconds of a "/" request through CherryPy's WSGI app: counting on, off."""
    os.environ.update(HOST='127.0.0.1', PORT='8080', ADMIN_PORT='0')
    sys.path.insert(0, ROOT)
    import cherrypy
    import run
    run.configure()  # mounts the site; no listener is started
    cherrypy.config.update({'log.screen': False})  # the access log is formatted, not printed
    config = cherrypy.tree.apps[''].config['/']
    environ = {'REQUEST_METHOD': 'GET', 'PATH_INFO': '/', 'QUERY_STRING': '', 'SCRIPT_NAME': '',
               'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '8080', 'SERVER_PROTOCOL': 'HTTP/1.1',
               'ACTUAL_SERVER_PROTOCOL': 'HTTP/1.1', 'REMOTE_ADDR': '127.0.0.1',
               'HTTP_HOST': '127.0.0.1', 'wsgi.url_scheme': 'http', 'wsgi.errors': sys.stderr,
               'wsgi.version': (1, 0), 'wsgi.multithread': True, 'wsgi.multiprocess': False,
               'wsgi.run_once': False}
    statuses = set()

    def call():
        answer = cherrypy.tree(dict(environ, **{'wsgi.input': io.BytesIO()}),
                               lambda status, headers, exc_info=None: statuses.add(status))
        b''.join(answer)
        answer.close()

    cpu = {True: [], False: []}
    for i in range(calls):
        on = config['tools.count.on'] = bool(i % 2)
        started = time.process_time_ns()
        call()
        cpu[on].append((time.process_time_ns() - started) / 1000)
    assert statuses == {'200 OK'}, statuses
    on, off = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f'\nin process, median of {calls // 2} requests each, alternating:')
    print(f'counting on  {on:6.0f} us CPU/request\ncounting off {off:6.0f} us CPU/request\n'
          f'cost of counting {on - off:+.1f} us per request ({(on - off) / off:+.1%})')


def main():
    servers = {name: start(code) for name, code in VARIANTS.items()}
    results = {name: [] for name in VARIANTS}
    cpu = {name: [] for name in VARIANTS}
    try:
        for _ in range(ROUNDS):
            for name, (proc, port) in servers.items():
                used = cpu_seconds(proc.pid)
                out = subprocess.run(WRK + [f'http://127.0.0.1:{port}/'], capture_output=True,
                                     text=True, timeout=60).stdout
                used = cpu_seconds(proc.pid) - used
                rate = float(re.search(r'Requests/sec:\s+([\d.]+)', out).group(1))
                done = int(re.search(r'(\d+) requests in', out).group(1))
                errors = re.search(r'Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)', out)
                results[name].append(rate)
                cpu[name].append(used / done * 1e6)
                print(f'{name:32} {rate:7.0f} req/s {cpu[name][-1]:6.0f} us CPU/request'
                      f'{"  " + errors.group(0) if errors else ""}', flush=True)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    base = statistics.median(results['B counters off'])
    base_cpu = statistics.median(cpu['B counters off'])
    print(f'\nmedians of {ROUNDS} rounds, wrk {" ".join(WRK[1:])}; ratios to B')
    for name, rates in results.items():
        rate, used = statistics.median(rates), statistics.median(cpu[name])
        print(f'{name:32} {rate:7.0f} req/s ({rate / base:.3f})  '
              f'{used:6.0f} us CPU/request ({used / base_cpu:.3f})')
    in_process()


if __name__ == '__main__':
    main()
