"""Tests of WORKERS=N (server/workers.py): delete this file with workers.py."""
import concurrent.futures
import os
import signal
import time
import unittest

from server import testing
from server.testing import request, start_server, stop

# Two worker processes, each reporting its process id.
WORKERS_SERVER = """
import os, time, cherrypy, run
run.Landing.pid = cherrypy.expose(lambda self: str(os.getpid()))
run.Landing.slow = cherrypy.expose(lambda self, s='1': time.sleep(float(s)) or 'done')
run.main()
"""


class WorkersTest(unittest.TestCase):

    def test_workers_share_the_port_and_stop_together_on_sigterm(self):
        proc, port, _ = start_server({'WORKERS': '2'}, code=WORKERS_SERVER)
        try:
            pids = {request('GET', '/pid', port=port)[2] for _ in range(60)}
            self.assertEqual(len(pids), 2, pids)  # the kernel spread connections over both
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                calls = [pool.submit(request, 'GET', '/slow?s=1', port=port, timeout=10)
                         for _ in range(10)]
                time.sleep(0.3)
                proc.send_signal(signal.SIGTERM)  # to the parent only, as Docker does
                results = [f.result()[:3:2] for f in calls]
        finally:
            out, err = stop(proc)
        self.assertEqual(results, [(200, b'done')] * 10)
        self.assertEqual(proc.returncode, 0, err)
        self.assertEqual(out.count('Serving on'), 2)

    def test_a_worker_dying_stops_the_set_with_status_1(self):
        proc, port, _ = start_server({'WORKERS': '2'}, code=WORKERS_SERVER)
        try:
            victim = int(request('GET', '/pid', port=port)[2])
            os.kill(victim, signal.SIGKILL)
        finally:
            out, err = stop(proc)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(f'Worker {victim} exited on its own', err)


if __name__ == '__main__':
    testing.main()
