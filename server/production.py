"""Production behaviour that CherryPy does not give by default, each piece with its reason.

- Error pages: the status line only; no traceback, file path or version string.
- Access log: one line per request to stdout, health probes left out, written in
  batches by one thread, without the per-request uuid4 that CherryPy's formatter computes.
- Connections (cheroot): a worker gets a connection only once a whole request has arrived
  (IdleConnections reads it without blocking, server/http.py checks its framing), so slow
  or silent clients hold no worker; requests that break RFC 9112 framing or header syntax
  are refused (400, 413, 431, 501) and the connection closed, and what a handler leaves
  unread can never be read as the next request (docs/server-hardening.md); a request
  must arrive within server.socket_timeout (else 408); idle keep-alive time and count are
  settable (prod.conf "ops."); out of file descriptors, accepting pauses; nothing sent
  before a stop is dropped; under load the workers pick up ready connections between
  requests, so the selector thread only accepts (IdleConnections.look_between_requests).
- Slow readers (cheroot): what a client does not take at once waits in the connection's
  outbox (memory, then a temporary file, or the static file itself) and the selector sends
  it, so a slow reader holds no thread (_SocketWriter, _Gateway, IdleConnections.send_rest).
- Threads (cheroot): the 100-thread pool stays, but requests go to as few threads as keep
  up (PacedQueue), more as soon as handlers block; a small answer leaves in one write().
- Requests reach CherryPy through WSGI, as with stock CherryPy, and the hardening headers
  are added as cheroot sends the answer (_Request).
- The soft limit on open files is raised to the hard one at start (raise_open_files_limit).
- Private names of cheroot and CherryPy used here: UPSTREAM, checked by a test.
- The Date header is formatted once a second, not once an answer (http_date).
- TRUST_PROXY: the client address is the one the load balancer appended, not one the
  client wrote.
"""
import collections
import email.utils
import errno
import functools
import html
import importlib
import ipaddress
import inspect
import logging
import math
import os
import queue
import re
import resource
import select
import selectors
import socket
import sys
import tempfile
import threading
import time

import cheroot.connections
import cheroot.errors
import cheroot.makefile
import cheroot.server
import cheroot.wsgi
from cheroot.workers import threadpool
import cherrypy
from cherrypy import _cplogging, _cpwsgi_server
from cherrypy.lib import httputil
from cherrypy.process import servers

from . import client_input, http, logs

HEALTH_PATH = '/healthcheck'
_STOP_WORKER = threadpool._SHUTDOWNREQUEST  # what cheroot queues to end a worker thread

# Every private name of cheroot and CherryPy this module relies on, and what it is used
# for. server/tests/test_http.py checks that each still exists, so an upgrade that drops
# one fails there, by name. "Class().name" is an attribute cheroot sets on instances.
UPSTREAM = {
    'cheroot.workers.threadpool._SHUTDOWNREQUEST':
        'what ThreadPool queues to end a worker; PacedQueue hands it out past its limit',
    'cheroot.workers.threadpool.ThreadPool()._queue':
        'the pool\'s request queue, replaced by PacedQueue (TunedServer.prepare)',
    'cheroot.workers.threadpool.ThreadPool().get':
        'what a worker calls for its next connection: PacedQueue.get',
    'cheroot.workers.threadpool.ThreadPool._force_close':
        'what ThreadPool.stop() does to a worker still busy at shutdown_timeout: '
        '_end_connection, set on the pool (TunedServer.prepare)',
    'cheroot.server.HTTPServer()._connections':
        'the ConnectionManager, replaced by IdleConnections (TunedServer.prepare)',
    'cheroot.connections.ConnectionManager()._selector':
        'the selector of waiting connections (IdleConnections reads and registers in it)',
    'cheroot.connections.ConnectionManager()._stop_requested': 'the selector loop\'s stop flag',
    'cheroot.connections.ConnectionManager._run': 'the selector loop: IdleConnections._run',
    'cheroot.connections.ConnectionManager._expire':
        'closing idle connections: IdleConnections._expire (deadlines, 408)',
    'cheroot.connections.ConnectionManager._from_server_socket':
        'accept() and wrap one connection; IdleConnections accepts a burst, pauses on EMFILE',
    'cheroot.connections.ConnectionManager._remove_invalid_sockets':
        'cleanup after select() fails, called as cheroot\'s loop does',
    'cheroot.connections._ThreadsafeSelector()._selector':
        'the selectors.DefaultSelector, counted without a lock (can_add_keepalive_connection)',
    'cheroot.connections._ThreadsafeSelector.connections': 'the registered connections (_expire)',
    'cheroot.server.HTTPServer._stopping_for_interrupt':
        'TunedServer.stop: a worker\'s interrupt stops the server; serve() then waits for it',
    'cherrypy._cpwsgi_server.CPWSGIServer': 'cherrypy.server\'s server class, extended by Server',
    'cherrypy._cpwsgi_server.CPWSGIHTTPRequest': 'its request class, extended by _Request',
    'cherrypy._cplogging.LogManager': 'the access log, extended by AccessLog',
    'cherrypy.Tool._setup': 'logs.RequestIdTool sets the id there, once per request, before any hook; '
                            'client_input.ClientInputTool checks headers there; '
                            'dashboard.CountingTool starts its clock there',
    'cherrypy.Tool._merged_args':
        'dashboard.CountingTool: its arguments, merged as Tool._setup does',
    'cheroot.workers.threadpool.ThreadPool()._threads':
        'dashboard.threads(): the pool\'s worker threads, counted for http_threads_busy/idle',
    'cheroot.connections.ConnectionManager._num_connections':
        'tests only (test_server): the connections the selector holds',
    'cherrypy.lib.file_generator_limited':
        'one range of a static file: _Gateway reads its locals "fileobj" and "remaining" to '
        'send the rest from the file (SlowReaderTest fails if they change)',
    'cherrypy._cperror.format_exc': 'logs: a traceback as one JSON field',
    'cherrypy._cperror._exc_info': 'logs: the exception being handled, as cherrypy.log reads it',
}

# What .ci/upstream/plugin.py (the harness running cheroot's and CherryPy's own suites with
# this server in place) relies on; it checks them with check_upstream() as it loads, since
# their modules need pytest, which the template's own environment does not install.
UPSTREAM_HARNESS = {
    'cherrypy._cpserver.Server.httpserver_from_self':
        'builds cherrypy.server\'s server: the harness builds production.Server instead',
    'cherrypy.test.helper.CPWebCase._setup_server': 'the harness sets the suite\'s port there',
    'cheroot.test._pytest_plugin': 'cheroot\'s own pytest plugin, loaded as its suite expects',
    'cheroot.wsgi.Server.__init__':
        'calls super(Server, self) by its module\'s global name: the harness keeps it stock',
}


def check_upstream(names):
    """The names of `names` (UPSTREAM, UPSTREAM_HARNESS) that no longer exist upstream.
    "module.Class().attribute": set on instances, so looked for in the class's source."""
    missing = []
    for name in names:
        owner, _, attribute = name.rpartition('.')
        try:
            if owner.endswith(')'):
                cls = _resolve(owner[:-2])
                source = ''.join(inspect.getsource(c) for c in cls.__mro__ if c is not object)
                if 'self.' + attribute + ' =' not in source:
                    missing.append(name)
            elif not hasattr(_resolve(owner), attribute):
                importlib.import_module(name)  # a module not imported yet, or ImportError
        except (ImportError, AttributeError, OSError, TypeError):
            missing.append(name)
    return missing


def _resolve(dotted):
    parts = dotted.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part)
        return value
    raise ImportError(dotted)


def error_page(status, message, traceback, version):
    """Every error page (404, 405, 413, 500...): the status line only.

    CherryPy passes a traceback only when request.show_tracebacks is on (DEV=1). It labels
    its own page, not one of a function: the failed page's type (image/png...) would stay.
    """
    cherrypy.serving.response.headers['Content-Type'] = 'text/html;charset=utf-8'
    details = f'<pre>{html.escape(traceback)}</pre>' if traceback else ''
    status = html.escape(status)
    return f'<!DOCTYPE html>\n<title>{status}</title>\n<h1>{status}</h1>\n{details}'


class AccessLog(_cplogging.LogManager):
    """CherryPy's access log (Apache combined format, or JSON: logs.py), without health
    probes, written in batches by one background thread. Its error lines name the request
    (logs.error).

    Workers only format a line and append it. Through `logging` directly, 100 workers fought
    for its handler lock and walked the stack for every line: 20% of the server's time under
    load (bench/profile.sh). Waking the writer for every line still cost a thread switch per
    request, so it wakes every BATCH_SECONDS and logs what came in as one record, one line
    per request. The timestamp is built once a second, not once a request.
    """

    BATCH_SECONDS = 0.1
    # Characters of lines waiting for the writer. Past it, lines are dropped and counted: a
    # stdout read slower than requests come (a stalled log collector) grew the queue to 1 GB
    # of RAM in 15 s with 16 KiB headers. Stock CherryPy makes every request wait instead.
    QUEUE_LIMIT = 16 * 2**20
    log_health_checks = False

    def __init__(self, appid=None, logger_root='cherrypy'):
        super().__init__(appid, logger_root)
        self.lines = collections.deque()  # append and popleft are thread-safe, without a lock
        self._writing = threading.Lock()  # keeps batches in order when flush() runs too
        self._queue_lock = threading.Lock()
        self.queued = self.dropped = 0  # characters waiting; lines dropped since the last batch
        self._writer = None
        self._stamp = (None, '')

    def _append(self, line):
        with self._queue_lock:
            if self.queued + len(line) > self.QUEUE_LIMIT:
                self.dropped += 1
                return
            self.queued += len(line)
        self.lines.append(line)

    def start_writer(self):
        """On engine start: in the serving process, after any fork (threads do not survive one)."""
        if self._writer is None or not self._writer.is_alive():  # one, however many restarts
            self._writer = threading.Thread(target=self._write, name='access log', daemon=True)
            self._writer.start()

    def access(self):
        request = cherrypy.serving.request
        if not self.log_health_checks and request.path_info.startswith(HEALTH_PATH):
            return
        response = cherrypy.serving.response
        if logs.json_lines:
            self._append(logs.access_line(request, response))
            return
        status = (response.output_status or b'-').split(b' ', 1)[0].decode('ascii', 'replace')
        # CherryPy stores header names title-cased: dict.get skips its per-lookup
        # key.title(), which made these three lookups a third of this method.
        headers = request.headers
        atoms = (_quote(request.remote.name or request.remote.ip or '-'), self.time(),
                 _quote(request.request_line), status,
                 dict.get(response.headers, 'Content-Length') or '-',
                 _quote(dict.get(headers, 'Referer', '')),
                 _quote(dict.get(headers, 'User-Agent', '')))
        self._append('%s - - %s "%s" %s %s "%s" "%s"' % atoms)

    def time(self):
        second = int(time.time())
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, super().time())
        return stamp[1]

    error = logs.error

    def _write(self):
        while True:
            time.sleep(self.BATCH_SECONDS)
            self.flush()

    def flush(self):
        """Write every line appended so far (by the writer, at exit, and in tests)."""
        with self._writing:
            batch = [self.lines.popleft() for _ in range(len(self.lines))]
            with self._queue_lock:
                self.queued -= sum(map(len, batch))
                dropped, self.dropped = self.dropped, 0
            if batch:
                self.access_log.info('\n'.join(batch))
            if dropped:
                self.error(f'{dropped} access-log lines dropped: the log output did not keep up',
                           severity=logging.WARNING)


def _quote(text):
    """Escape what a client sent, as Apache does: no raw quotes or control characters."""
    if text.isascii() and text.isprintable() and '"' not in text and '\\' not in text:
        return text  # nothing to escape: the usual case, in a quarter of the time
    return text.encode('unicode_escape').decode('ascii').replace('"', '\\"')


class IdleConnections(cheroot.connections.ConnectionManager):
    """cheroot's selector, which here also collects each request before a worker sees it.

    1. Every connection, new or kept alive, waits in the selector. When it is readable, the
       thread that looks (the selector thread, or a worker between requests) reads what
       arrived without blocking into the connection's buffer (_receive). A worker gets the
       connection only when a whole request is there: its head, checked for size and
       framing (server/http.py), and its body up to server.max_request_body_size. So a
       slow or silent client (slowloris, slow uploads) never holds a worker, and cheroot's
       parser reads from memory (_RequestReader): the bytes of one request are never read
       as another, whatever the handler left unread.
    2. Deadlines (_expire): a request must arrive within server.socket_timeout of its first
       byte (a new connection: of its accept), its body within BODY_TIMEOUTS times that,
       else 408 and close. An idle kept-alive connection closes silently after
       ops.keep_alive_timeout (longer than a load balancer's idle timeout).
    3. What a client got wrong is answered here, without a worker: 400 for bad chunked
       framing, 413 for a body over the cap, 431 for headers over the cap, 503 when the
       buffers of all connections would pass BUFFER_BUDGET; then the connection closes
       after a short linger, so the answer is read before the reset.
    4. accept() failing for want of file descriptors (EMFILE) pauses accepting, doubling
       the pause up to a second, instead of spinning and logging a traceback per try.
    5. A burst of new connections is accepted in one round, not one per round.
    6. Stopping: what arrived is served, and the loop neither spins nor lets a worker die
       handing a connection back to a closed selector.
    7. Under load the workers look for ready connections themselves, between requests
       (look_between_requests), and the selector thread only accepts new connections.
    8. It notes when its loop last ran, so readiness can tell a stuck listener.
    """

    _queue = None  # the PacedQueue whose workers look; None: cheroot's own selector loop
    RECV_SIZE = 65536
    BODY_TIMEOUTS = 6  # a body may take 6 x socket_timeout, if bytes keep coming
    BUFFER_BUDGET = 64 * 2**20  # bytes of unfinished requests held over all connections
    STREAM_ABOVE = 8 * 2**20  # a larger body (if the cap allows one) streams to the worker
    LINGER = 2.0  # seconds to read and drop what follows a rejected request

    def __init__(self, server):
        super().__init__(server)
        self._looking = threading.Lock()  # one looker at a time: no connection handed out twice
        # PacedQueue says "a thread could start one more request" to the selector thread's
        # poll() (_wait_for_room) through this pipe.
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._wake_lock = threading.Lock()  # no write to a closed pipe's number, reused since
        self._held = 0  # bytes in the buffers of connections in the selector
        self._held_lock = threading.Lock()
        self._accept_paused = None  # (resume at, pause) while accept() lacks descriptors
        self._last_pause = (-math.inf, 0.0)  # (resumed at, pause) of the last pause
        if hasattr(server.requests._queue, 'has_room'):  # a PacedQueue, not cheroot's queue
            self._queue = server.requests._queue
            self._queue.look = self.look_between_requests
            self._queue.on_room = self._wake
            self._queue.refuse = self._refuse_waiting

    def look_between_requests(self):
        """A worker that finished a request and found the queue empty takes what is ready
        itself (a select() that does not wait) instead of leaving it to the selector thread.

        Python runs one thread at a time: each time the selector thread woke for the next
        ready connections, it took the interpreter from the worker and gave it back, two
        thread switches. The worker, already running, looks in a few microseconds. wrk on /,
        alternating runs at 10, 100 and 1,000 connections: 0.7-2.0 thread switches per
        request became 0.14-0.23, CPU time per request fell 5-20%, req/s rose 3-27%.
        """
        if self._looking.acquire(blocking=False):
            try:
                if not self._stop_requested:  # after a stop, serve_arrived() had the last look
                    self._hand_out_ready(timeout=0)
            except Exception:  # a worker must never die of looking: cheroot would stop serving
                self.server.client_errors.note('look between requests failed', traceback=True)
            finally:
                self._looking.release()

    def _run(self, expiration_interval):
        """The selector thread: it looks only while a worker could start a request now. While
        the running threads are all busy (PacedQueue.has_room), a request it handed out would
        only wait in the queue, and the workers look when they finish."""
        if self._queue is None:
            return self._run_alone(expiration_interval)
        last_expiry = time.time()
        while not self._stop_requested:
            self._drain_wake()  # before the check: a worker's _wake() after it ends the wait
            if self._queue.has_room():
                with self._looking:
                    self._hand_out_ready(timeout=expiration_interval)
            else:
                self._wait_for_room(expiration_interval)
            if time.time() - last_expiry > expiration_interval:
                with self._looking:
                    self._expire(None)
                last_expiry = time.time()

    def _refuse_waiting(self, conn):
        """PacedQueue.refuse: a request found no place within server.accepted_queue_timeout:
        503 and close, as stock cheroot answers when its queue stays full."""
        if conn.pending is None:  # TLS: closed (the answer would need the worker's TLS writer)
            conn.close()
            return
        head = conn.rfile.data if isinstance(conn.rfile, _RequestReader) else b''
        self._reject(conn, None, '503 Service Unavailable', 'The server is busy; try again later.',
                     head)  # then a linger: the answer is read before any reset

    def _wake(self):
        """PacedQueue.on_room: a thread could start a request; the selector thread looks."""
        with self._wake_lock:
            if self._wake_write >= 0:
                try:
                    os.write(self._wake_write, b'\0')
                except OSError:  # full: it is awake already
                    pass

    def _drain_wake(self):
        with self._wake_lock:
            if self._wake_read < 0:
                return
            try:
                while os.read(self._wake_read, 4096):
                    pass
            except OSError:  # empty
                pass

    def _wait_for_room(self, seconds):
        """While every running thread is busy: no request is read (it would only wait in the
        queue), but new connections are accepted at once, as cheroot's loop does. A burst
        past the listen backlog (server.socket_queue_size) was dropped while threads were
        busy, its clients' connects retried 1, 3, 7 s later: CherryPy's test_antistampede,
        100 clients of a 4 s handler, took 14-61 s instead of stock's 4.1 s."""
        wake = self._wake_read
        if wake < 0 or self._stop_requested:
            return
        poller = select.poll()
        poller.register(wake, select.POLLIN)
        paused = self._accept_paused
        if paused is None:
            poller.register(self.server.socket, select.POLLIN)
        elif time.monotonic() >= paused[0]:
            with self._looking:
                self._resume_accepting()
            return
        else:
            seconds = min(seconds, paused[0] - time.monotonic())
        if any(fd != wake for fd, _ in poller.poll(max(0.0, seconds) * 1000)):
            with self._looking:
                if not self._stop_requested:  # else the listener may be closed already
                    self._from_server_socket(self.server.socket)

    def _run_alone(self, expiration_interval):
        """cheroot's loop, with this class's reading and deadlines (cheroot's own queue)."""
        last_expiry = time.time()
        while not self._stop_requested:
            with self._looking:
                self._hand_out_ready(timeout=expiration_interval)
            if time.time() - last_expiry > expiration_interval:
                with self._looking:
                    self._expire(None)
                last_expiry = time.time()

    def _hand_out_ready(self, timeout):
        """One round: accept new connections, read the ready ones, hand out whole requests."""
        paused = self._accept_paused
        if paused is not None and time.monotonic() >= paused[0]:
            self._resume_accepting()
        try:
            ready = list(self._selector.select(timeout=timeout))
        except OSError:
            self._remove_invalid_sockets()
            return
        for fd, conn in ready:
            if conn is self.server:
                self._from_server_socket(self.server.socket)
            elif conn.sending:
                self._send_more(fd, conn)
            elif conn.pending is None:  # TLS: cheroot's way, the worker reads
                self._selector.unregister(fd)  # until the worker put()s it back
                self.server.process_conn(conn)
            else:
                self._receive(fd, conn)

    def _receive(self, fd, conn):
        """Read what arrived on a ready connection; hand it out if a request is complete."""
        try:
            data = os.read(fd, self.RECV_SIZE)  # the socket is non-blocking (it has a timeout)
        except BlockingIOError:
            return
        except OSError:
            data = b''
        if not data:  # the client closed (or reset) the connection
            if conn.pending and not conn.lingering:
                if conn.head is not None:  # a body cut short: never served as if whole
                    self._reject(conn, fd, '400 Bad Request', 'The request body was cut short.')
                    return
                # Half a head, then the end: cheroot answers it (400), as it would have
                # when it read the socket itself.
                conn.close_after = True
                self._hand_out(conn, fd, bytes(conn.pending))
                return
            self._drop(fd, conn)
            return
        if conn.lingering:
            return  # read and dropped: the rejected client's remaining bytes
        now = time.monotonic()
        if conn.idle:  # the first bytes of a request on a kept-alive connection
            conn.idle = False
            conn.deadline = now + self.server.timeout
        elif conn.head is not None:  # a body: it keeps the connection as long as it flows
            conn.deadline = min(now + self.server.timeout, conn.body_deadline)
        pending = conn.pending
        if not pending:
            conn.pending = data
        elif type(pending) is bytearray:
            pending += data  # in place: a body arriving in small pieces is not copied each time
        else:
            conn.pending = bytearray(pending) + data
        self._hold(len(data))
        self._advance(conn, fd)

    def _advance(self, conn, fd=None):
        """Hand `conn` to a worker if its buffer holds a whole request, else wait in the
        selector (registered if fd is None); reject and close it if the request is bad."""
        try:
            end = self._request_end(conn)
        except http.Reject as rejected:
            self._reject(conn, fd, rejected.status, rejected.reason)
            return
        except Exception:  # a parsing bug: this client gets 400, the server keeps serving
            self.server.client_errors.note('Unexpected error reading a request', traceback=True)
            self._reject(conn, fd, '400 Bad Request', 'Malformed request.')
            return
        if end is None:
            if self._held > self.BUFFER_BUDGET:
                self._reject(conn, fd, '503 Service Unavailable', 'Too many requests arriving.')
                return
            if fd is None:
                self._register(conn)
            return
        pending = conn.pending
        if end is STREAM:  # a body larger than the server buffers: the worker reads the rest
            conn.close_after = True
            self._hand_out(conn, fd, pending, _StreamingReader(bytes(pending), conn.socket))
        else:
            self._hand_out(conn, fd, bytes(pending[:end]))

    def _hand_out(self, conn, fd, request, reader=None):
        """Give a worker conn with `request`, the start of conn.pending, to read."""
        conn.rfile = reader or _RequestReader(request)
        conn.pending = conn.pending[len(request):]
        self._hold(-len(request))
        conn.head = None
        if fd is not None:
            self._selector.unregister(fd)  # until the worker put()s it back
        self.server.process_conn(conn)

    def _request_end(self, conn):
        """Where the request at the start of conn.pending ends; None while incomplete."""
        server = self.server
        if conn.head is None:
            pending = conn.pending
            if pending[:2] == b'\r\n':  # RFC 9112 2.2: empty lines before a request are ignored
                stripped = pending[_EMPTY_LINES(pending).end():]  # whole CRLFs: "\r" may be half
                self._hold(len(stripped) - len(pending))
                pending = conn.pending = stripped
            end = http.head_end(pending, server.max_request_header_size or 2**20)
            if end is None:
                return None
            kind, length = http.framing(pending[:end])
            if kind is http.NONE:
                return end
            if kind is http.INVALID:  # the worker answers 400 or 501 (check_head), and closes
                conn.close_after = True
                return end
            conn.head, conn.body_deadline = end, time.monotonic() + self.BODY_TIMEOUTS * server.timeout
            conn.deadline = min(time.monotonic() + server.timeout, conn.body_deadline)
            conn.scan = (end, 0, None)  # chunked_scan's place: chunk line, data bytes, trailers
            cap = server.max_request_body_size
            if kind is http.LENGTH:
                if cap and length > cap:
                    raise http.Reject('413 Request Entity Too Large', 'The entity sent with the '
                                      'request exceeds the maximum allowed bytes.')
                conn.body_end = end + length
            else:
                conn.body_end = None
            if _expects_continue(pending[:end]):
                if http.check_head(pending[:end], server.require_host) is not None:
                    conn.close_after = True  # the worker refuses the head: no body asked for
                    return end
                conn.continue_sent = True
                _send_now(conn.socket, b'HTTP/1.1 100 Continue\r\n\r\n')
        pending, end = conn.pending, conn.body_end
        if end is not None:  # Content-Length
            if len(pending) >= end:
                return end
            return STREAM if end - conn.head > self._stream_above() else None
        done, pos, total, trailers = http.chunked_scan(
            pending, *conn.scan[:2], server.max_request_body_size, conn.scan[2],
            server.max_request_header_size or http.MAX_TRAILERS)
        if done:
            return pos
        conn.scan = (pos, total, trailers)
        if len(pending) - conn.head > self._stream_above():
            return STREAM
        return None

    def _stream_above(self):
        cap = self.server.max_request_body_size
        return self.STREAM_ABOVE if not cap or cap > self.STREAM_ABOVE else cap + 2**16

    def _hold(self, count):
        with self._held_lock:
            self._held += count

    def _register(self, conn):
        try:
            self._selector.register(conn.socket.fileno(), selectors.EVENT_READ, data=conn)
        except (ValueError, KeyError, OSError):  # a stop closed the selector, or it is gone
            self._close(conn)

    def _reject(self, conn, fd, status, reason, head=None):
        """Answer a bad request here and close the connection after a linger. head: the
        request's bytes, if not at the start of conn.pending (for its id)."""
        server = self.server
        _send_now(conn.socket, refuse(server, conn, status, reason,
                                      conn.pending if head is None else head))
        self._hold(-len(conn.pending))
        conn.pending = b''
        conn.head = None
        conn.lingering = True
        conn.idle = False
        conn.deadline = time.monotonic() + self.LINGER
        try:
            conn.socket.shutdown(socket.SHUT_WR)  # the answer, then FIN
        except OSError:
            pass
        if fd is None:
            self._register(conn)

    def _drop(self, fd, conn):
        try:
            self._selector.unregister(fd)
        except (KeyError, ValueError):
            pass
        self._close(conn)

    def _close(self, conn):
        if conn.pending:
            self._hold(-len(conn.pending))
            conn.pending = b''
        if isinstance(conn.wfile, _SocketWriter):
            conn.wfile.discard()
        try:
            conn.close()
        except OSError:
            pass

    def _from_server_socket(self, server_socket):
        # Accept every connection the kernel has queued, not one per loop: with 100 busy
        # workers each loop waits for the GIL, and accepting 100 connections one by one took
        # 1.7 s. wrk -c100 on /: p99 1.3 s and 22 timeouts before, 150 ms and none after.
        # The listener is non-blocking (TunedServer.prepare): stop at "no more".
        for _ in range(self.server.request_queue_size):
            try:
                conn = super()._from_server_socket(server_socket)
            except OSError as error:
                if error.errno not in _NO_DESCRIPTORS:
                    raise
                self._pause_accepting(error)
                return None
            if conn is None:
                break
            conn.deadline = time.monotonic() + self.server.timeout
            conn.last_used = time.time()
            self._register(conn)  # a worker gets it when a request has arrived
        return None

    def _pause_accepting(self, error):
        """Out of file descriptors: stop watching the listener a while (it stays readable,
        and each try would fail again), then try again; the wait doubles up to a second."""
        resumed, last = self._last_pause
        pause = min(1.0, last * 2) if time.monotonic() - resumed < 2.0 else 0.05
        self._accept_paused = (time.monotonic() + pause, pause)
        try:
            self._selector.unregister(self.server.socket.fileno())
        except (KeyError, ValueError):
            pass
        self.server.client_errors.note(
            f'accept() failed: {error.strerror}; not accepting for {pause:.2f} s '
            '(raise the open files limit, or lower ops.keep_alive_limit)')

    def _resume_accepting(self):
        pause = self._accept_paused[1]
        try:
            self._selector.register(self.server.socket.fileno(), selectors.EVENT_READ,
                                    data=self.server)
        except (KeyError, ValueError, OSError):
            return
        self._accept_paused = None
        self._last_pause = (time.monotonic(), pause)

    def send_rest(self, conn, close):
        """A worker is done with conn, but its client has not taken the whole answer: the
        selector sends the rest as the client reads (within the answer's deadline), then
        closes conn (`close`) or waits for its next request, which is not read before."""
        conn.sending, conn.close_when_sent, conn.idle = True, close, False
        conn.answer_deadline = conn.wfile.answer_deadline()
        conn.deadline = min(conn.answer_deadline, time.monotonic() + (self.server.timeout or 0))
        try:
            self._selector.register(conn.socket.fileno(), selectors.EVENT_WRITE, data=conn)
        except (ValueError, KeyError, OSError):  # a stop closed the selector, or it is gone
            self._close(conn)

    def _send_more(self, fd, conn):
        wfile = conn.wfile
        sent = wfile.sent
        try:
            done = wfile.push()
        except OSError:  # the client went away (or the file shrank): nothing more to do
            done = None
        if not done:
            if done is None:
                self._drop(fd, conn)
            elif wfile.sent > sent:  # each piece within socket_timeout, the whole in its budget
                conn.deadline = min(conn.answer_deadline, time.monotonic() + self.server.timeout)
            return
        self._selector.unregister(fd)
        conn.sending = False
        if conn.close_when_sent:
            self._close(conn)
        else:
            self.put(conn)

    def put(self, conn):
        """A worker is done with conn and keeps it open: wait for its next request. It must
        not raise: cheroot's worker takes any error here as fatal and stops the server."""
        try:
            self._put(conn)
        except Exception:
            self.server.client_errors.note('Unexpected error keeping a connection', traceback=True)
            self._close(conn)

    def _put(self, conn):
        conn.last_used = time.time()
        if conn.pending is None:  # TLS: cheroot's way
            if conn.rfile.has_data():  # decrypted already: the selector would not see it
                self.server.process_conn(conn)
            else:
                self._register(conn)
            return
        conn.close_after = conn.continue_sent = False
        if conn.wfile.outbox:  # a slow reader: the rest of the answer first
            self.send_rest(conn, close=False)
        elif conn.pending:  # pipelined: the next request is (partly) here already
            conn.idle = False
            conn.deadline = time.monotonic() + self.server.timeout
            self._advance(conn)
        else:
            conn.idle = True
            self._register(conn)

    def stop(self):
        self._stop_requested = True
        self._wake()  # the selector thread stops waiting for room: it has to stop
        super().stop()

    def run(self, expiration_interval):
        if self._stop_requested:  # TunedServer.stop() is serving what arrived: cheroot's
            time.sleep(0.05)      # serve() would call run() again at once, spinning
            return
        super().run(expiration_interval)

    def _expire(self, threshold):
        """Close idle connections after ops.keep_alive_timeout; answer 408 to those whose
        request did not arrive in time; close rejected ones after their linger."""
        self.server.last_loop = time.monotonic()
        server = self.server
        now, idle_since = time.monotonic(), time.time() - (server.keep_alive_timeout or server.timeout)
        for fd, conn in list(self._selector.connections):
            if conn is self.server:
                continue
            if (conn.pending == b'' and not conn.lingering and not conn.sending
                    and (conn.idle and (conn.last_used or 0) < idle_since or now > conn.deadline)
                    and _readable(conn.socket, 0)):
                # A request (or a close) that arrived while every thread was busy, so that no
                # one read it: read it now, before a 408 or an idle close would lose it.
                self._receive(fd, conn)
                if conn.socket is None or conn.socket.fileno() < 0 or not conn.pending and not conn.idle:
                    continue  # handed out, closed, or taken whole
            if conn.pending is None or conn.idle:
                if conn.last_used is not None and conn.last_used < idle_since:
                    self._drop(fd, conn)
            elif now > conn.deadline:
                if not (conn.lingering or conn.sending):
                    _send_now(conn.socket, refuse(
                        server, conn, '408 Request Timeout', '', conn.pending,
                        note='the request did not arrive in time'))
                self._drop(fd, conn)

    def serve_arrived(self, wait=0.5):
        """At shutdown: accept what the kernel queued, hand every connection that has a
        request waiting to a worker, so that no request sent before the stop is lost."""
        with self._looking:  # a worker may be looking still; after this, none does
            self._serve_arrived(wait)

    def _serve_arrived(self, wait):
        listener = self.server.socket
        while True:
            try:
                self._from_server_socket(listener)
            except OSError:
                break
            # Out of descriptors (accept paused), the listener stays readable: that was a
            # loop without end, and a stop that never returned.
            if self._accept_paused is not None or not _readable(listener, 0):
                break
        deadline = time.monotonic() + wait
        while len(self._selector) > 1 and time.monotonic() < deadline:
            ready = [(fd, conn) for fd, conn in self._selector.select(timeout=0.05)
                     if conn is not self.server]
            for fd, conn in ready:
                self._serve_ready(fd, conn)
            if not ready:
                break
        self._finish_sending(time.monotonic() + (self.server.shutdown_timeout or 0))

    def _serve_ready(self, fd, conn):
        if conn.sending:
            self._send_more(fd, conn)
        elif conn.pending is None:
            self._selector.unregister(fd)
            self.server.process_conn(conn)
        else:
            self._receive(fd, conn)

    def _finish_sending(self, deadline):
        """At shutdown: the answers slow readers still owe are sent until `deadline`
        (server.shutdown_timeout), as stock cheroot's workers would go on sending; new
        connections are refused meanwhile (a connect that waited in the backlog would be
        reset after its request was sent)."""
        def owing():
            return any(conn.sending for _, conn in self._selector.connections
                       if conn is not self.server)
        if not owing():
            return
        try:
            self._selector.unregister(self.server.socket.fileno())
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.server.socket.shutdown(socket.SHUT_RD)  # a listener: refuse connects now
        except OSError:
            pass
        while time.monotonic() < deadline and owing():
            # Every ready connection, not only those owed an answer: one that is readable (a
            # kept-alive client closing, or sending a request) stayed ready, and select()
            # returned at once, round after round, a busy loop until the deadline.
            for fd, conn in list(self._selector.select(timeout=0.05)):
                if conn is not self.server:
                    self._serve_ready(fd, conn)

    def close(self):
        """cheroot closes every waiting connection at the end of a stop: what slow readers
        are still owed is dropped, not waited for."""
        for _, conn in list(self._selector.connections):
            if conn is not self.server and isinstance(conn.wfile, _SocketWriter):
                conn.wfile.discard()
        super().close()
        with self._wake_lock:
            pipe, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), -1, -1
        for fd in pipe:
            if fd >= 0:
                os.close(fd)


STREAM = object()  # _request_end: hand the connection out now, its body streams to the worker
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _expects_continue(head):
    return b'100-continue' in head.lower() and http.expects_continue(head)


def _send_now(sock, data):
    """Send what fits now, without waiting (an answer to a client that may not read)."""
    try:
        return os.write(sock.fileno(), data)
    except OSError:
        return 0


def refuse(server, conn, status, reason, head, note=None):
    """A request the server answers itself (IdleConnections, _Request.parse_request): its
    line in the client-errors log (once a minute per kind) and its answer (error_response),
    both naming its request id, which logs.id_of_head() takes from `head`, what arrived of
    the request: the client's or balancer's X-Request-ID if well-formed, else a new one.
    note: what the log says, if not `reason` (the answer's body)."""
    request_id = logs.id_of_head(head)
    server.client_errors.note(f'{status} for {conn.remote_addr} request_id={request_id}: '
                              f'{reason if note is None else note}')
    return error_response(server, status, reason, request_id)


def error_response(server, status, reason, request_id=None):
    """A whole answer for a request the server refuses: the status, the reason, the request
    id (X-Request-Id, as on CherryPy's answers; a new one if none or not well-formed), the
    site headers; no version, no traceback; Connection: close. It never raises."""
    try:
        if not (isinstance(request_id, str) and logs.VALID_ID(request_id)):
            request_id = logs.new_id()
        body = reason.encode('latin-1', 'replace')
        lines = [f'{server.protocol} {status}'.encode('latin-1', 'replace'),
                 b'Content-Type: text/plain', b'Content-Length: %d' % len(body),
                 b'Connection: close', b'X-Request-Id: ' + request_id.encode('ascii')]
        lines += [name + b': ' + value for _, (name, value) in server.site_headers]
        return b'\r\n'.join(lines) + b'\r\n\r\n' + body
    except Exception:  # an answer even so: the connection closes after it
        status = status.encode('ascii', 'replace') if isinstance(status, str) else b'400 Bad Request'
        return b'HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' % status


def _readable(sock, seconds, event=select.POLLIN):
    """Whether sock has data (or EOF) within `seconds`; poll, since select() stops at fd 1024."""
    poller = select.poll()
    poller.register(sock, event)
    return bool(poller.poll(seconds * 1000))


def _writable(sock, seconds):
    return _readable(sock, seconds, select.POLLOUT)


class ClientErrors:
    """The log of what clients got wrong (and of accept() failures): each kind of message
    once per INTERVAL with how many like it were not logged, not once a request. 50 clients
    sending a malformed line used to write 61,000 tracebacks in 20 s."""

    INTERVAL = 60.0

    def __init__(self, log):
        self.log = log
        self._seen = {}  # kind: (logged at, not logged since)
        self._lock = threading.Lock()

    def note(self, message, traceback=False):
        kind = message.split(':', 1)[0].split(' for ', 1)[0]
        now = time.monotonic()
        with self._lock:
            logged, skipped = self._seen.get(kind, (None, 0))
            if logged is not None and now - logged < self.INTERVAL:
                self._seen[kind] = (logged, skipped + 1)
                return
            self._seen[kind] = (now, 0)
        more = f' ({skipped} more like it in the last {self.INTERVAL:.0f} s)' if skipped else ''
        self.log(message + more, level=logging.WARNING, traceback=traceback)


class _RequestReader:
    """conn.rfile while a worker serves a request: that request's bytes and no more.

    What a handler leaves unread is dropped with it; it cannot be read as the next request.
    A line is one bytes.find(), not a dozen calls through _pyio as in cheroot's reader.
    """

    def __init__(self, data):  # no __slots__: tests (cheroot's own) patch its methods
        self.data = data
        self.pos = 0
        self.bytes_read = 0

    def readline(self, size=-1):
        data, pos = self.data, self.pos
        end = data.find(b'\n', pos) + 1 or len(data)
        if size is not None and 0 <= size < end - pos:
            end = pos + size
        self.pos = end
        self.bytes_read += end - pos
        return data[pos:end]

    def read(self, size=-1):
        data, pos = self.data, self.pos
        end = len(data) if size is None or size < 0 else min(len(data), pos + size)
        self.pos = end
        self.bytes_read += end - pos
        return data[pos:end]

    def has_data(self):
        return False  # the next request, if any, waits in conn.pending

    def head(self):
        """The request's head: its line and headers, to the empty line (all, if cut short)."""
        data = self.data
        return data[:http.head_end(data, len(data)) or len(data)]

    def close(self):
        pass


class _StreamingReader(_RequestReader):
    """A request whose body is larger than the server buffers (STREAM_ABOVE): what arrived,
    then the socket (with server.socket_timeout per read). The connection closes after."""

    __slots__ = ('sock',)

    def __init__(self, data, sock):
        super().__init__(data)
        self.sock = sock

    def _more(self):
        chunk = self.sock.recv(65536)
        if chunk:
            self.data = self.data[self.pos:] + chunk
            self.pos = 0
        return bool(chunk)

    def readline(self, size=-1):
        while (self.data.find(b'\n', self.pos) < 0
               and (size is None or size < 0 or len(self.data) - self.pos < size)
               and self._more()):
            pass
        return super().readline(size)

    def read(self, size=-1):
        while (size is None or size < 0 or len(self.data) - self.pos < size) and self._more():
            pass
        return super().read(size)


class _FileRest:
    """The rest of a file that an answer owes a slow reader: a static file, or the answer's
    rest spilled to a temporary file (budget: the spill budget it counts in); sent from the
    file (os.sendfile) as the client reads."""

    __slots__ = ('fd', 'offset', 'count', 'budget')

    def __init__(self, fd, offset, count, budget=None):
        self.fd, self.offset, self.count, self.budget = fd, offset, count, budget

    def __len__(self):
        return self.count


class _Budget:
    """Bytes of answers kept in memory for slow readers, over all connections."""

    def __init__(self, limit):
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, count):
        with self._lock:
            if self.used + count > self.limit:
                return False
            self.used += count
            return True

    def give(self, count):
        with self._lock:
            self.used -= count


class _SocketWriter:
    """conn.wfile. What the client does not take at once waits in an outbox, and the worker
    goes on: a slow reader holds memory (OUTBOX_CAP, and OUTBOX_BUDGET over all
    connections; past that, a temporary file within SPILL_BUDGET, as nginx buffers a slow
    client's answer) or, for a static file, the open file, but no thread. When the worker is
    done, the selector sends the rest as the client reads (IdleConnections.send_rest).
    Beyond those caps the worker waits, within the answer's deadline: each piece within
    server.socket_timeout, the whole answer within socket_timeout plus a second per
    SEND_RATE bytes (cheroot's writer allowed socket_timeout per send(), so a client
    reading a byte every few seconds held a worker without end).
    The status line and headers wait for the first piece of the body, so a small answer
    leaves in one system call.
    """

    SEND_RATE = 64 * 1024  # bytes a second a slow reader must average, after socket_timeout
    OUTBOX_CAP = 4 * 2**20  # bytes of one connection's answers kept in memory for it

    # No __slots__: tests (cheroot's own) patch its methods on the instance.

    def __init__(self, sock):
        self.sock = sock
        self.fd = -1 if sock is None else sock.fileno()
        self.bytes_written = 0
        self.held = None
        self.hold_next = False  # set by begin(): keep the next write (the headers)
        self.started = None
        self.sent = 0
        self.timeout = None
        self.outbox = collections.deque()  # memoryviews, then perhaps a _FileRest
        self.kept = 0  # bytes of the outbox in memory (taken from budget)
        self.spilled = 0  # bytes of the outbox in temporary files (taken from spill_budget)
        self.budget = None  # the server's _Budget; None: nothing is kept, the worker waits
        self.spill_budget = None

    def begin(self, timeout):
        """An answer starts (_Request.send_headers): its status line and headers come next."""
        self.hold_next = True
        self.started, self.sent, self.timeout = time.monotonic(), 0, timeout

    def write(self, data):
        if self.hold_next:
            self.hold_next = False
            self.held = bytes(data)
            return len(data)
        size = len(data)
        pieces = (data,) if self.held is None else (self.held, data)
        self.held = None
        if not self.outbox or self.push():
            pieces = self._send_now(pieces)
            if not pieces:
                return size
        self._keep(pieces)
        return size

    def _send_now(self, pieces):
        """Send what the socket takes without waiting; return the rest."""
        total = sum(map(len, pieces))
        if not total:
            return ()
        try:
            sent = os.writev(self.fd, pieces) if len(pieces) > 1 else os.write(self.fd, pieces[0])
        except BlockingIOError:
            sent = 0
        self.sent += sent
        self.bytes_written += sent
        if sent == total:
            return ()
        rest = []
        for piece in pieces:
            if sent >= len(piece):
                sent -= len(piece)
            else:
                rest.append(memoryview(piece)[sent:] if sent else piece)
                sent = 0
        return rest

    def _keep(self, pieces):
        """Keep what the client did not take in the outbox, or wait until it takes it."""
        size = sum(map(len, pieces))
        budget = self.budget
        if budget is not None and self.kept + self.spilled + size <= self.OUTBOX_CAP:
            if budget.take(size):
                self.outbox.extend(pieces)
                self.kept += size
                return
            if self._spill(pieces, size):
                return
        self.wait_sent()
        for piece in pieces:
            self._send_waiting(piece)

    def _spill(self, pieces, size):
        """The memory for slow readers is taken: keep the rest in a temporary file, the one
        the outbox ends with if it does and holds under OUTBOX_CAP, sent or not (a file per
        write() held a descriptor for each piece of a streamed answer: one slow reader of
        64-byte pieces reached the open files limit)."""
        spill = self.spill_budget
        if spill is None or not spill.take(size):
            return False
        last = self.outbox[-1] if self.outbox else None
        end = last.offset + last.count if type(last) is _FileRest else None
        if end is not None and last.budget is spill and end + size <= self.OUTBOX_CAP:
            try:
                for piece in pieces:
                    piece = memoryview(piece)
                    while piece:
                        written = os.pwrite(last.fd, piece, end)
                        end += written
                        piece = piece[written:]
            except OSError:  # no room: the worker waits (what was written is never sent)
                spill.give(size)
                return False
            last.count += size
            self.spilled += size
            return True
        try:
            with tempfile.TemporaryFile() as file:
                for piece in pieces:
                    file.write(piece)
                file.flush()
                fd = os.dup(file.fileno())
        except OSError:  # no room, a read-only file system, no descriptors: the worker waits
            spill.give(size)
            return False
        self.outbox.append(_FileRest(fd, 0, size, spill))
        self.spilled += size
        return True

    def add_file(self, fd, offset, count):
        """The answer's rest is `count` bytes of file `fd` from `offset` (fd is closed when
        they are sent or the connection ends)."""
        self.outbox.append(_FileRest(fd, offset, count))

    def push(self):
        """Send what the outbox holds as far as the socket takes it now; True once empty."""
        outbox, fd = self.outbox, self.fd
        while outbox:
            item = outbox[0]
            if type(item) is _FileRest:
                try:
                    sent = os.sendfile(fd, item.fd, item.offset, min(item.count, 2**20))
                except BlockingIOError:
                    return False
                if not sent:  # the file shrank since its Content-Length was sent
                    raise ConnectionAbortedError('the file is shorter than its Content-Length')
                item.offset += sent
                item.count -= sent
                self.sent += sent
                self.bytes_written += sent
                if item.budget is not None:
                    item.budget.give(sent)
                    self.spilled -= sent
                if item.count:
                    continue
                os.close(item.fd)
            else:
                try:
                    sent = os.write(fd, item)
                except BlockingIOError:
                    return False
                self.sent += sent
                self.bytes_written += sent
                self.kept -= sent
                self.budget.give(sent)
                if sent < len(item):  # the socket's buffer is full
                    outbox[0] = memoryview(item)[sent:]
                    return False
            outbox.popleft()
        return True

    def owed(self):
        return sum(map(len, self.outbox))

    def answer_deadline(self):
        """time.monotonic() by which the client must have taken the whole answer."""
        if self.started is None:
            return time.monotonic() + (self.timeout or 0)
        return self.started + self.timeout + (self.sent + self.owed()) / self.SEND_RATE

    def discard(self):
        """The connection ends: what the outbox holds is dropped."""
        for item in self.outbox:
            if type(item) is _FileRest:
                os.close(item.fd)
                if item.budget is not None:
                    item.budget.give(item.count)
        self.outbox.clear()
        self.spilled = 0
        if self.kept:
            self.budget.give(self.kept)
            self.kept = 0

    def wait_sent(self):
        """Wait until the outbox is sent, within the answer's deadline."""
        while not self.push():
            left = self._left()
            if left <= 0 or not _writable(self.sock, min(left, self.timeout or left)):
                raise TimeoutError('timed out')  # as sendall says it: cheroot closes quietly

    def _left(self):
        if self.started is None or not self.timeout:
            return self.timeout or math.inf
        return self.started + self.timeout + self.sent / self.SEND_RATE - time.monotonic()

    def _send_waiting(self, data):
        left = self._left()
        if left < (self.timeout or math.inf) / 2:  # a long answer to a slow reader: its budget runs out
            self._send_within(data, left)
            return
        self.sock.sendall(data)
        self.sent += len(data)
        self.bytes_written += len(data)

    def _send_within(self, data, seconds):
        if seconds <= 0:
            raise TimeoutError('timed out')  # as sendall says it: cheroot closes quietly
        self.sock.settimeout(seconds)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(self.timeout)
        self.sent += len(data)
        self.bytes_written += len(data)

    def flush(self):
        if self.held is not None:
            self.write(b'')

    def close(self):
        self.held = None


class _HeaderReader(cheroot.server.HeaderReader):
    """cheroot's header reader, without a field whose name has "_" and that another field
    shares once both are WSGI names: X_Forwarded_For and X-Forwarded-For are both
    HTTP_X_FORWARDED_FOR, and the later one won, so a client's X_Forwarded_For replaced the
    X-Forwarded-For a proxy (HAProxy's option forwardfor) had written. Nor, ever, one that
    the app would read as a field the server frames or routes by (Content_Length: the app's
    CONTENT_LENGTH, not the server's). nginx and Apache drop every name with "_"; here
    only these two kinds are dropped."""

    FRAMING = {b'CONTENT_LENGTH', b'CONTENT_TYPE', b'TRANSFER_ENCODING', b'HOST'}

    def __call__(self, rfile, hdict=None):
        hdict = super().__call__(rfile, hdict)
        if b'_' in b''.join(hdict):  # rare: one join, not a loop, on every request
            wsgi_names = collections.Counter(_wsgi_name(name) for name in hdict)
            for name in [name for name in hdict if b'_' in name and (
                    wsgi_names[_wsgi_name(name)] > 1 or _wsgi_name(name) in self.FRAMING)]:
                del hdict[name]
        return hdict


def _wsgi_name(name):
    return name.upper().replace(b'-', b'_')


class _NoExpectHeaderReader(_HeaderReader):
    """Leaves out "Expect: 100-continue" when the server has answered it already
    (IdleConnections sends it while it waits for the body)."""

    def __call__(self, rfile, hdict=None):
        hdict = super().__call__(rfile, hdict)
        if hdict.get(b'Expect', b'').lower() == b'100-continue':
            del hdict[b'Expect']
        return hdict


_HEADERS, _NO_EXPECT = _HeaderReader(), _NoExpectHeaderReader()


class _Request(cheroot.server.HTTPRequest):
    """cheroot's request, with:

    - the strict checks of server/http.py on the head, for what cheroot lets through
      (where cheroot refuses a request itself, its own answer stands);
    - the server's site headers (prod.conf's ops.response_headers) on every answer that
      does not set them itself, errors included (through CherryPy's response.headers
      config, each went through its header map and was encoded three times: 24k
      instructions a header, per request);
    - Connection: close when the server decided so for the request (close_after);
    - status line and headers sent with the body's first piece (_SocketWriter).
    """

    header_reader = _HEADERS  # cheroot's extension point

    def parse_request(self):
        conn = self.conn
        reader = conn.rfile
        if not isinstance(reader, _RequestReader):
            return super().parse_request()  # TLS: cheroot's own reading
        conn.wfile.started = None  # no answer under way: no answer's budget applies
        head = reader.head()
        problem = http.check_head(head, self.server.require_host)
        if conn.continue_sent or problem:  # "100 Continue" said already, or not to be said
            self.header_reader = _NO_EXPECT
        try:  # cheroot's own answer where it refuses the request too (its tests read them)
            super().parse_request()
        except OSError:  # the connection failed (or a test made it fail): cheroot's handling
            raise
        except Exception:  # it failed on it (a whitespace-led line, "http://[::1"): 400
            self.ready = True
            problem = problem or ('400 Bad Request', 'Malformed request.')
        if self.ready and problem is not None:
            self.ready = False
            status, reason = problem
            conn.wfile.write(refuse(self.server, conn, status, reason, head))
            self.close_connection = True
        elif not self.ready:
            self.close_connection = True

    def simple_response(self, status, msg=''):
        """cheroot's own refusals (a malformed request line or URI, 505, a missing length...)
        answered as the template's: X-Request-Id, named in their client-errors line, the site
        headers and Connection: close (the connection closes after each, as it did)."""
        status = str(status)
        if status[:1] not in ('4', '5') or not isinstance(self.conn.rfile, _RequestReader):
            return super().simple_response(status, msg)  # TLS: cheroot's own reading
        conn, self.close_connection = self.conn, True
        if status[:1] == '4' or status[:3] in ('501', '505'):  # the client's bytes
            answer = refuse(self.server, conn, status, msg, conn.rfile.head(),
                            note=msg or 'refused by cheroot')
        else:  # the server's failure: cheroot logs it
            answer = error_response(self.server, status, msg)
        try:
            conn.wfile.write(answer)
        except OSError as error:  # as cheroot's: only a client gone is not an error
            if error.args[0] not in cheroot.errors.socket_errors_to_ignore:
                raise

    def send_headers(self):
        if self.conn.close_after:
            self.close_connection = True
        own = {name.lower() for name, _ in self.outheaders}
        self.outheaders.extend(header for name, header in self.server.site_headers
                               if name not in own)
        wfile = self.conn.wfile
        if isinstance(wfile, _SocketWriter):
            wfile.begin(self.server.timeout)  # cheroot's next write: status line and headers
        super().send_headers()

    def respond(self):
        try:
            super().respond()
        finally:
            wfile = self.conn.wfile
            if isinstance(wfile, _SocketWriter):
                wfile.hold_next = False
                if wfile.held is not None:  # an answer without a body: HEAD, 304, 204
                    wfile.flush()


class _CherryPyRequest(_Request, _cpwsgi_server.CPWSGIHTTPRequest):
    """_Request in CherryPy's URL mode (absolute URIs allowed, as CherryPy's server does)."""


class _Gateway(cheroot.wsgi.Gateway_10):
    """cheroot's WSGI gateway, but when a client reads a static file slower than it is sent,
    the rest of the file goes to the selector as the open file (os.sendfile as the client
    reads), and the worker is free. Only a file answer as CherryPy's serve_file makes it:
    a cherrypy.lib.file_generator read from the start, or one range of a file, with its
    Content-Length."""

    def respond(self):  # cheroot's loop, plus the hand-over
        response = self.req.server.wsgi_app(self.env, self.start_response)
        wfile = self.req.conn.wfile
        slow = wfile.outbox if isinstance(wfile, _SocketWriter) else None
        written = 0
        try:
            for chunk in filter(None, response):
                if not isinstance(chunk, bytes):
                    raise ValueError('WSGI Applications must yield bytes')
                self.write(chunk)
                written += len(chunk)
                if slow and self._file_rest_to_selector(wfile, written):
                    break
        finally:
            self.req.ensure_headers_sent()
            if hasattr(response, 'close'):
                response.close()

    def _file_rest_to_selector(self, wfile, written):
        declared = self.remaining_bytes_out  # the Content-Length (cheroot never lowers it)
        if declared is None or self.req.chunked_write:
            return False
        owed = declared - written
        body = cherrypy.response.body  # this thread's request, until response.close()
        if type(body) is cherrypy.lib.file_generator:  # a whole file
            source, left = body.input, None
        elif getattr(body, 'gi_code', None) is _ONE_RANGE and body.gi_frame is not None:
            # One range of a file (Range: bytes=...): the generator's own file and count.
            frame = body.gi_frame.f_locals
            source, left = frame.get('fileobj'), frame.get('remaining')
        else:
            return False
        try:
            fd = source.fileno()
            at = source.tell()
            size = os.fstat(fd).st_size
        except (AttributeError, OSError, ValueError):
            return False
        if left is None:
            if at != written or size - at != owed:
                return False  # not a whole file from its start: cheroot's way
        elif left != owed or at + owed > size:
            return False
        if owed <= 0:
            return False
        try:
            rest = os.dup(fd)  # the file object closes with CherryPy's response
        except OSError:
            return False
        wfile.add_file(rest, at, owed)
        return True


# CherryPy's generator of one range of a file (cherrypy.lib.static, for "Range: bytes=a-b");
# _Gateway reads its locals "fileobj" and "remaining" (UPSTREAM).
_ONE_RANGE = cherrypy.lib.file_generator_limited.__code__


class TunedConnection(cheroot.server.HTTPConnection):
    """A connection whose requests IdleConnections collects before a worker reads them
    (pending: bytes received and not handed out yet), answered through _SocketWriter.
    TLS connections keep cheroot's own reader and writer (pending is None)."""

    RequestHandlerClass = _Request
    idle = False  # between requests on a kept-alive connection (else: a request is due)
    head = None  # where the head ends, once it has arrived and the body has not
    body_end = None
    body_deadline = 0.0
    scan = None  # chunked: where to resume scanning the body
    deadline = 0.0  # time.monotonic() by which the request must have arrived
    lingering = False  # rejected: what the client still sends is read and dropped
    close_after = False  # the answer says "Connection: close"
    continue_sent = False  # "100 Continue" was sent for the request being collected
    sending = False  # the selector sends the rest of an answer (IdleConnections.send_rest)
    close_when_sent = False
    answer_deadline = 0.0

    def __init__(self, server, sock, makefile=cheroot.makefile.MakeFile):
        plain = makefile is cheroot.makefile.MakeFile
        super().__init__(server, sock, _plain_files if plain else makefile)
        self.pending = b'' if plain else None
        if plain:
            self.wfile.budget = getattr(server, 'outbox_budget', None)
            self.wfile.spill_budget = getattr(server, 'spill_budget', None)

    def close(self):
        """cheroot closes a connection after its last answer: if the client has not taken
        all of it, the selector sends the rest first."""
        wfile = self.wfile
        if isinstance(wfile, _SocketWriter) and wfile.outbox:
            manager = self.server._connections
            if self.server.ready and isinstance(manager, IdleConnections):
                manager.send_rest(self, close=True)
                return
            try:  # stopping: this worker sends the rest itself, as stock cheroot's would
                wfile.wait_sent()
            except OSError:
                pass
            wfile.discard()
        if self.pending:  # pipelined bytes behind the last answer: out of the selector's count
            manager = self.server._connections
            if isinstance(manager, IdleConnections):
                manager._hold(-len(self.pending))
            self.pending = b''
        super().close()


class _CherryPyConnection(TunedConnection):
    """The connection of CherryPy's servers (main and admin): CherryPy's URL mode."""

    RequestHandlerClass = _CherryPyRequest


def _plain_files(sock, mode, bufsize=None):
    """cheroot's `makefile` for a plain connection: ours instead of its _pyio files."""
    return _RequestReader(b'') if 'r' in mode else _SocketWriter(sock)


class PacedQueue:
    """cheroot's request queue, handing requests to as few of the pool's threads as keep up.

    Python runs one thread at a time (the GIL). cheroot wakes a fresh thread for every
    request, so under load all 100 threads take turns and every turn costs a thread switch:
    at 100 connections the template served ~1,000 req/s on 100 threads and ~1,300 on one.
    Here a request goes to one of at most `active` running threads, the most recently idle
    first; the others sleep. A thread on the same request for over STALL seconds (blocked
    on a database, a slow client, a sleep, or long work) stops counting as running, so it
    holds up the rest for at most STALL. Every TICK a watchdog looks at the process: if
    requests wait while it uses under BUSY_CPU of a core (threads blocked briefly), `active`
    doubles; at FULL_CPU it drops by one, as another thread cannot add to a full core.
    (It used to halve, and only when nothing waited: one noisy tick on a shared machine then
    left a CPU-bound load on 2 to 4 threads for good, at 4-9 thread switches per request
    instead of 1.2-1.5 and up to 40% fewer req/s; halving while requests waited cost handlers
    that wait 5 ms on I/O a quarter of their throughput.) A CPU-bound load runs on one
    thread; 100 slow handlers still run at once.
    """

    TICK = 0.01
    STALL = 0.05
    BUSY_CPU = 0.75
    FULL_CPU = 0.9

    def __init__(self, threads, maxsize=0):
        self.maxsize = maxsize  # server.accepted_queue_size; <= 0: no limit
        self.max_active = threads
        self.active = 1
        self.closed = False
        self.core = _cpu_limit()  # "a core" under a container CPU limit below one
        self._lock = threading.Lock()
        self._items = collections.deque()  # connections with a request waiting, oldest first
        self._overflow = collections.deque()  # (give up at, connection): no place for it yet
        self._idle = []  # sleeping threads, most recently idle last
        self._busy = set()  # the _Waiters of threads on a request (the watchdog looks at these)
        self._stalled = 0  # ...of which on the same one for over STALL (the watchdog counts)
        self._local = threading.local()
        self._watcher = threading.Thread(target=self._watch, name='paced queue', daemon=True)
        self._watcher.start()

    def close(self):
        """The server stopped: the watchdog ends, and is gone when this returns."""
        self.closed = True
        if self._watcher is not threading.current_thread():
            self._watcher.join(timeout=1.0)

    def qsize(self):
        return len(self._items) + len(self._overflow)

    def put(self, item, block=True, timeout=None):
        """Queue a connection with a request, as cheroot's ThreadPool.put() does, with
        server.accepted_queue_size and server.accepted_queue_timeout meaning what they mean
        on stock: a request finds a place if a thread is free or fewer than accepted_queue_size
        wait (here threads sleep while others keep up, so the sleeping ones count as free),
        else it waits up to accepted_queue_timeout for one, then gets 503. Stock's put()
        waited in the selector thread; here the request waits in _overflow, the looking
        thread goes on, and the watchdog refuses it when its time is up (refuse())."""
        with self._lock:
            if item is _STOP_WORKER:  # a stop serves every request that arrived before it
                self._items.extend(conn for _, conn in self._overflow)
                self._overflow.clear()
            elif self._overflow or self._full():
                if not block or timeout is not None and timeout <= 0:
                    raise queue.Full  # cheroot answers 503
                wait = math.inf if timeout is None else timeout
                self._overflow.append((time.monotonic() + wait, item))
                return
            self._items.append(item)  # in order: a stop never overtakes a waiting request
            self._hand_out()

    def _full(self):
        """Whether a request queued now would wait for a place (lock held)."""
        return 0 < self.maxsize <= len(self._items) - len(self._idle)

    def _admit_waiting(self, now):
        """Requests waiting for a place take those that freed up; those whose
        accepted_queue_timeout is up are returned, to be refused (lock held)."""
        overflow, expired = self._overflow, []
        while overflow and not self._full():
            self._items.append(overflow.popleft()[1])
        while overflow and overflow[0][0] <= now:
            expired.append(overflow.popleft()[1])
        return expired

    def get(self):
        """A worker asks for its next request; the one before it, if any, is done."""
        waiter = getattr(self._local, 'waiter', None)
        if not self._items:
            self.look()  # queues what is ready now: no wait for the selector thread
        with self._lock:
            if waiter is None:
                waiter = self._local.waiter = _Waiter()
            self._busy.discard(waiter)
            if self._items and (self.has_room() or self._items[0] is _STOP_WORKER):
                item = self._take(waiter, self._items.popleft())  # no sleep, no switch
                if self._overflow:
                    self._admit_waiting(-math.inf)  # a place freed up; none gives up here
                return item
            self._idle.append(waiter)
            if self._overflow:
                self._admit_waiting(-math.inf)
                self._hand_out()
            room = self.has_room()
        if room:  # this thread stops looking between requests: the selector thread looks
            self.on_room()
        waiter.wake.acquire()  # sleeps until _hand_out() gives this thread an item
        return waiter.item

    def look(self):
        """Set by IdleConnections: a worker with nothing queued looks for ready connections."""

    def on_room(self):
        """Set by IdleConnections: called when has_room() may have turned true."""

    def refuse(self, conn):
        """Set by IdleConnections: a request found no place in accepted_queue_timeout."""
        conn.close()

    def has_room(self):
        """Whether a request handed out now would start at once (IdleConnections reads it
        without the lock)."""
        return len(self._busy) - self._stalled < self.active

    def _take(self, waiter, item):
        if item is not _STOP_WORKER:  # a stopped thread never comes back to say it is done
            waiter.since = time.monotonic()
            self._busy.add(waiter)
        return item

    def _hand_out(self):
        """Wake sleeping threads for waiting items, as far as `active` allows (lock held)."""
        items = self._items
        while items and self._idle and (self.has_room() or items[0] is _STOP_WORKER):
            waiter = self._idle.pop()
            waiter.item = self._take(waiter, items.popleft())
            waiter.wake.release()

    def _watch(self):
        clock, cpu = time.monotonic(), time.process_time()
        while not self.closed:
            time.sleep(self.TICK)
            try:
                now, now_cpu = time.monotonic(), time.process_time()
                used = (now_cpu - cpu) / max(now - clock, 1e-6) / self.core
                clock, cpu = now, now_cpu
                self._pace(now, used)
            except Exception:  # never let the queue lose its watchdog
                cherrypy.log('PacedQueue watchdog', 'SERVER', traceback=True)

    def _pace(self, now, used):
        with self._lock:
            # Only the busy threads, not all 100, every TICK.
            self._stalled = sum(1 for w in self._busy if now - w.since > self.STALL)
            if self._items and used < self.BUSY_CPU:
                self.active = min(self.active * 2, self.max_active)
            elif used >= self.FULL_CPU and self.active > 1:
                self.active -= 1  # the extra thread goes idle when it finishes
            expired = self._admit_waiting(now) if self._overflow else ()
            self._hand_out()
            room = self.has_room()
        for conn in expired:
            try:
                self.refuse(conn)
            except Exception:  # the others are still refused, and this one closed
                cherrypy.log('PacedQueue refusal', 'SERVER', traceback=True)
                conn.close()
        if room:  # a thread stalled or `active` grew: the selector thread looks
            self.on_room()


class _Waiter:
    """One pool thread's place in PacedQueue: a lock it sleeps on and the item it is given."""

    def __init__(self):
        self.wake = threading.Lock()
        self.wake.acquire()
        self.item = None
        self.since = 0.0  # when it took its current request


def _cpu_limit(path='/sys/fs/cgroup/cpu.max'):
    """The container's CPU limit in cores, at most 1 (cgroup v2 "quota period"; "max" or
    no file: no limit). With a 500m limit the process never uses 75% of a whole core."""
    try:
        with open(path) as limit:
            quota, period = limit.read().split()[:2]
        return min(1.0, int(quota) / int(period))
    except (OSError, ValueError):
        return 1.0


class TunedServer:
    """The template's connection handling, mixed into cheroot's servers."""

    ConnectionClass = TunedConnection
    draining = False  # set on SIGTERM: answers say "Connection: close"
    last_loop = None
    site_headers = ()  # (lower-case name, (name, value)), as bytes; see _Request.send_headers

    client_errors = None  # ClientErrors, made by prepare()
    OUTBOX_BUDGET = 64 * 2**20  # bytes of answers kept for slow readers, all connections
    # Past that, in temporary files. They are unlinked, so a Kubernetes emptyDir's sizeLimit
    # does not see them: this keeps them within a node's usual spare disk (1 GiB before).
    SPILL_BUDGET = 256 * 2**20
    outbox_budget = spill_budget = None  # their _Budgets, made by prepare()
    require_host = False  # HTTP/1.1 without Host: 400 (CherryPy's servers; cheroot does not)
    keep_alive_timeout = None  # set by tune(); None: server.socket_timeout, as cheroot
    _serve_thread = None  # the thread in serve(), joined by stop()

    def tune(self, keep_alive_timeout, keep_alive_limit, site_headers=None):
        self.site_headers = [(name.lower().encode(), (name.encode(), value.encode()))
                             for name, value in (site_headers or {}).items()]
        self.keep_alive_timeout = keep_alive_timeout
        # cheroot keeps 10 idle keep-alive connections: at 100 clients most were closed
        # after every request and re-opened.
        self.keep_alive_conn_limit = keep_alive_limit
        self.server_name = 'CherryPy'  # cheroot's own error answers: no version either

    def prepare(self):
        pool = self.requests  # cheroot's ThreadPool, started by super().prepare()
        pool._queue = PacedQueue(pool.min, pool._queue.maxsize)
        self.client_errors = ClientErrors(self.error_log)
        pool.get = pool._queue.get
        pool._force_close = _end_connection
        self.last_loop = time.monotonic()  # a restart is not a stuck selector
        try:
            super().prepare()
            self.outbox_budget = _Budget(self.OUTBOX_BUDGET)
            self.spill_budget = _Budget(self.SPILL_BUDGET)
            if self.gateway is cheroot.wsgi.Gateway_10:
                self.gateway = _Gateway
            self.socket.setblocking(False)  # accept() only after the selector said "readable"
            self._connections.close()  # cheroot's manager, replaced before serve() starts
            self._connections = IdleConnections(self)  # its wake-up pipe may hit EMFILE
        except BaseException:
            pool._queue.close()  # its watchdog ends
            raise
        self.draining = False

    @property
    def can_add_keepalive_connection(self):
        # cheroot counts idle connections under the selector's lock on every request (5% of
        # the time under load, bench/profile.sh); the limit is soft, so count without it.
        if not self.ready or self.draining:
            return False
        limit = self.keep_alive_conn_limit
        idle = len(self._connections._selector._selector.get_map() or ()) - 1  # less the listener
        return limit is None or idle < limit

    def stop(self):
        timeout, started = self.shutdown_timeout, time.monotonic()
        if self.ready and self.socket is not None:
            self._connections.stop()  # the selector loop; cheroot's stop() would close
            self._connections.serve_arrived()  # ...queued connections unanswered
        if timeout:  # one shutdown_timeout in all, slow readers' answers and workers' requests
            self.shutdown_timeout = max(0.1, timeout - (time.monotonic() - started))
        try:
            super().stop()
        finally:
            self.shutdown_timeout = timeout
        queue_ = self.requests._queue
        if isinstance(queue_, PacedQueue):
            queue_.close()  # its watchdog ends
        # What stop() started ends before it returns, as with stock cheroot: the serve()
        # thread leaves its loop within IdleConnections.run's 50 ms nap.
        serving = self._serve_thread
        if (serving is not None and serving is not threading.current_thread()
                and not self._stopping_for_interrupt):
            serving.join(timeout=1.0)

    def serve(self):
        self._serve_thread = threading.current_thread()
        try:
            super().serve()
        finally:
            self._serve_thread = None


def _end_connection(conn):
    """ThreadPool.stop(), at shutdown_timeout, for a worker still busy (cheroot's _force_close
    read conn.rfile.closed, which _RequestReader lacks: the AttributeError ended the stop
    and the process exited 70, not 0). As cheroot, reading is shut, so that a worker
    reading a request body ends; a worker whose answer is under way has its sending shut
    too, so that one waiting for a slow reader (an answer past the outbox's caps, or the
    rest of one at a stop: TunedConnection.close) fails at once and ends instead of
    holding the stop for up to server.socket_timeout. A handler still computing is waited
    for, and its answer sent, as by cheroot."""
    if conn is None:
        return
    wfile = conn.wfile
    sending = isinstance(wfile, _SocketWriter) and wfile.started is not None
    try:
        conn.socket.shutdown(socket.SHUT_RDWR if sending else socket.SHUT_RD)
    except OSError:  # closed already
        pass


class Server(TunedServer, _cpwsgi_server.CPWSGIServer):
    """CherryPy's server (cherrypy.server) with the template's connection handling."""

    ConnectionClass = _CherryPyConnection
    require_host = True  # CherryPy answers 400 too, but with its default error page

    def __init__(self, server_adapter):
        super().__init__(server_adapter)
        # CPWSGIServer has just set our connection's request class to its own; ours extends it.
        # Requests reach CherryPy through WSGI, as with stock CherryPy: its native gateway
        # saved 16% of a request but broke InternalRedirect, tree.graft, errors in streamed
        # answers and Content-Length checks.
        _CherryPyConnection.RequestHandlerClass = _CherryPyRequest


class AdminServer(TunedServer, cheroot.wsgi.Server):
    """A plain cheroot WSGI server for the admin listener, tuned the same way. Not in
    CherryPy's URL mode: CONNECT gets 405 and an absolute URI 400, as from stock cheroot."""

    require_host = True

    def error_log(self, msg='', level=logging.INFO, traceback=False):
        """Through CherryPy's log, as the main listener's (cheroot's own wrote plain text on
        stderr): LOG_FORMAT=json and log handlers apply to the admin listener's lines too."""
        cherrypy.engine.log(msg, level, traceback)


def http_date(timeval=None):
    """CherryPy's httputil.HTTPDate, which dates every answer, formatted once per second:
    0.15 us instead of email.utils.formatdate's 2.3 us, on every answer."""
    return _http_date_of_second(math.floor(time.time() if timeval is None else timeval))


@functools.lru_cache(maxsize=64)  # this second's, plus static files' Last-Modified
def _http_date_of_second(second):
    return email.utils.formatdate(second, usegmt=True)


def trusted_proxy():
    """Client address and scheme from the load balancer's headers.

    CherryPy's tools.proxy takes the left-most X-Forwarded-For entry, which the client
    controls. A load balancer appends the address it saw, so take the right-most one.
    """
    request = cherrypy.serving.request
    scheme = request.headers.get('X-Forwarded-Proto', '').rsplit(',', 1)[-1].strip().lower()
    if scheme in ('http', 'https'):  # anything else would go into redirects' Location
        request.base = scheme + request.base[request.base.find('://'):]
    client = _address(request.headers.get('X-Forwarded-For', '').rsplit(',', 1)[-1].strip())
    if client:  # else (not an address: the client's own words) the proxy's stays
        request.remote.ip = request.remote.name = client


_EMPTY_LINES = re.compile(rb'(?:\r\n)*').match


def _address(value):
    """The IP address in `value` ("192.0.2.1", "2001:db8::1", with a port too: "192.0.2.1:80",
    "[2001:db8::1]:80"), normalized; None if it holds none."""
    if '%' in value:  # an IPv6 zone id: any text at all after the "%"
        return None
    for candidate in (value, value.rpartition(':')[0].strip('[]')):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None


cherrypy.tools.trusted_proxy = cherrypy.Tool('before_request_body', trusted_proxy, priority=30)


def cache_control(max_age=0):
    """Let browsers and CDNs reuse a static file for max_age seconds without asking.

    CherryPy's tools.expires writes only the older Expires header.
    """
    if httputil.valid_status(cherrypy.serving.response.status)[0] in (200, 304):
        cherrypy.serving.response.headers['Cache-Control'] = f'public, max-age={max_age}'


cherrypy.tools.cache_control = cherrypy.Tool('before_finalize', cache_control)


def site_config(config):
    """The "/" settings of every site served here: prod.conf's, plus the pieces above."""
    return dict(config.app_config.get('/', {}), **{
        'error_page.default': error_page,
        'response.headers.server': 'CherryPy',  # no version string
        'tools.trusted_proxy.on': config['ops.trust_proxy'],
    })


def configure_app(app, config):
    """Error pages, hardening headers and the access log for one application."""
    app.merge({'/': site_config(config)})
    app.log = AccessLog(id(app), cherrypy.log.logger_root)
    app.log.log_health_checks = config['ops.log_health_checks']
    logs.install(app, config)  # request ids; LOG_FORMAT
    client_input.install(app)  # what CherryPy cannot parse: ignored or 400, never 500
    cherrypy.engine.subscribe('start', app.log.start_writer)
    cherrypy.engine.subscribe('exit', app.log.flush)  # no line lost at exit


def raise_open_files_limit():
    """Raise the soft limit on open files to the hard one; returns (before, after).

    Container runtimes often start processes with a soft limit of 1,024: 1,024 connections
    and accept() fails. The hard limit is what the process may have without privileges."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
    return soft, hard


_open_files = None  # (before, after) of raise_open_files_limit() at install()


def startup_note():
    """The start-up line's words on the open files limit (settings.Settings.summary)."""
    if _open_files is None:
        return ''
    before, after = (('unlimited' if n == resource.RLIM_INFINITY else str(n)) for n in _open_files)
    return f'open files: {after}' + (f' (raised from {before})' if before != after else '')


def install(app, config):
    """Apply the pieces above to the main app and to CherryPy's server."""
    global _open_files
    _open_files = raise_open_files_limit()
    configure_app(app, config)
    httputil.HTTPDate = http_date  # CherryPy looks it up on each use
    cherrypy.server.httpserver = Server(cherrypy.server)
    wait_without_socket(cherrypy.server)
    cherrypy.server.httpserver.tune(config['ops.keep_alive_timeout'], config['ops.keep_alive_limit'],
                                    config['ops.response_headers'])


def wait_until_serving(adapter):
    """ServerAdapter.wait() without its socket: until the HTTP server says it is ready.

    CherryPy's wait() then connects to the port (portend.occupied) to see it listening. With
    clients arriving as the server starts and the open files limit reached, that socket
    failed with EMFILE, the start failed and the engine stopped, though the server was
    serving. httpserver.ready is set once the server listens, which is what is asked."""
    while not getattr(adapter.httpserver, 'ready', False):
        if adapter.interrupt:
            raise adapter.interrupt
        time.sleep(0.01)


def wait_without_socket(adapter):
    """Make a ServerAdapter (cherrypy.server, the admin listener's) wait as above."""
    adapter.wait = functools.partial(wait_until_serving, adapter)
    return adapter


def listeners(engine=None):
    """Every listener the engine starts: cherrypy.server and any other (the admin one)."""
    engine = engine or cherrypy.engine
    return {cherrypy.server} | {
        listener.__self__ for listener in engine.listeners['start']
        if isinstance(getattr(listener, '__self__', None), servers.ServerAdapter)}


def exit_if_a_listener_failed(engine=None):
    """After engine.block(): a listener that stopped on an error stopped the whole engine,
    and the process exited 0, as after a SIGTERM, so a restart-on-failure policy left it
    down. Exit 70 (CherryPy's EX_SOFTWARE) instead, with one line saying why."""
    for adapter in listeners(engine):
        if isinstance(adapter.interrupt, Exception):
            print(f'the server stopped on an error: {adapter.interrupt!r}', file=sys.stderr, flush=True)
            raise SystemExit(70)


def exit_if_start_fails(grace=10.0, engine=None):
    """When the engine's start fails, CherryPy stops it and exits the process (status 70);
    if something in the stop hangs, the process used to stay, half-stopped, until killed.
    A daemon thread watches the start: failed and still here `grace` seconds later, the
    process exits 70 (CherryPy's EX_SOFTWARE) with one line saying why."""
    engine = engine or cherrypy.engine
    states = engine.states

    def watch():
        while engine.state in (states.STOPPED, states.STARTING):  # not started yet, or starting
            time.sleep(0.05)
        if engine.state == states.STARTED:
            return
        time.sleep(grace)  # a failed start: Bus.exit() ends the process, unless it hangs
        if engine.state != states.STARTED:
            print(f'start failed and the engine did not exit within {grace:.0f} s: exiting',
                  file=sys.stderr, flush=True)
            os._exit(70)

    thread = threading.Thread(target=watch, name='start watchdog', daemon=True)
    thread.start()
    return thread


def check_port_free(config):
    """One clear line and exit 1 if a port is taken, instead of a traceback or a wait."""
    host = config['server.socket_host']
    for name, port in (('PORT', config['server.socket_port']), ('ADMIN_PORT', config.admin_port())):
        if not port:
            continue
        try:
            socket.create_server((host, port)).close()
        except OSError as error:
            print(f'{name}={port}: cannot listen on {host}:{port}: {error.strerror or error}',
                  file=sys.stderr)
            raise SystemExit(1)
