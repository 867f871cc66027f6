"""The template's server machinery. You need not open this package: see server/README.md."""
import signal
import threading


def _exit_before_serving(signum, frame):
    raise SystemExit(0)


# From the first import on, SIGTERM (docker stop) exits 0, also before the engine handles it:
# without a handler Python dies of the signal, and as a container's PID 1 ignores it.
if (threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
    signal.signal(signal.SIGTERM, _exit_before_serving)
