"""The template's server machinery. You need not open this package: see server/README.md."""
import signal
import threading
import time


def _exit_before_serving(signum, frame):
    raise SystemExit(0)


# From the first import on, SIGTERM (docker stop) exits 0, also before the engine handles it:
# without a handler Python dies of the signal, and as a container's PID 1 ignores it.
if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
    signal.signal(signal.SIGTERM, _exit_before_serving)

import cherrypy  # noqa: E402  (after the handler: importing it takes a while)


def exit_once_started():
    """cherrypy.engine.exit(), once the engine has finished starting: exiting while it is
    still starting ends the process with status 70 (CherryPy's EX_SOFTWARE), not 0."""
    if cherrypy.engine.state == cherrypy.engine.states.STARTING:
        threading.Thread(target=_exit_after_start).start()  # not in the starting thread
    else:
        cherrypy.engine.exit()


def _exit_after_start():
    while cherrypy.engine.state == cherrypy.engine.states.STARTING:
        time.sleep(0.01)
    cherrypy.engine.exit()


# What SIGTERM does once run.py subscribes the engine's signal handlers (probes.py adds a drain).
cherrypy.engine.signal_handler.handlers['SIGTERM'] = exit_once_started
