"""WORKERS=N: N server processes sharing one port, for a single host with many cores.

One Python process uses about one core (the GIL). In Kubernetes, run one process per
container and scale with replicas; that stays the default (WORKERS=1). On one big host,
WORKERS=N forks N copies of the configured server, each with its own threads. They all
listen on the same port with SO_REUSEPORT, and the kernel spreads new connections over them.

The parent only watches: SIGTERM/SIGINT are passed to every worker, each drains and
finishes its requests in flight, and the parent exits 0 once all have exited 0. If a
worker dies on its own, the parent stops the others and exits 1, so that the container
or service manager restarts the whole set.

Delete this file and the `workers.` lines in run.py if you never need it.
"""
import os
import signal
import sys

from server import production


def share_ports():
    """Let every worker bind the same ports, and skip CherryPy's "is the port free?" check,
    which would see the other workers and give up."""
    for adapter in production.listeners():
        adapter.httpserver.reuse_port = True
        adapter.bind_addr = None  # CherryPy checks a port only when it has an address


def fork(count, serve):
    """Run serve() in `count` child processes; return the exit status for the parent."""
    share_ports()
    children = set()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # the child: serve until stopped, then leave without the parent's cleanup
            code = 0
            try:
                serve()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children.add(pid)

    stopping = []

    def forward(signum, frame):
        stopping.append(signum)
        for pid in children:
            os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(f'Started {count} worker processes sharing the port', flush=True)
    status = 0
    while children:
        pid, wait_status = os.wait()
        children.discard(pid)
        code = os.waitstatus_to_exitcode(wait_status)
        if code != 0 or not stopping:
            if not stopping:
                print(f'Worker {pid} exited on its own (status {code}); stopping the others',
                      file=sys.stderr, flush=True)
                forward(signal.SIGTERM, None)
            status = 1
    return status
