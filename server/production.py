"""Production behaviour that CherryPy does not give by default, each piece with its reason.

- Error pages: the status line only; no traceback, file path or version string.
- Access log: one line per request to stdout, health probes left out, written in
  batches by one thread, without the per-request uuid4 that CherryPy's formatter computes.
- Connections (cheroot): idle and newly opened connections wait in the selector, not in
  a worker thread, and a burst of them is accepted at once; idle keep-alive time and count
  are settable (prod.conf "ops."); nothing sent before a stop is dropped; under load the
  workers pick up ready connections between requests, so the selector thread sleeps
  (IdleConnections.look_between_requests); request lines are read from the buffer
  (_BufferedLineReader).
- Threads (cheroot): the 100-thread pool stays, but requests go to as few threads as keep
  up (PacedQueue), more as soon as handlers block; a small answer leaves in one send().
- Requests reach CherryPy through its native gateway, not WSGI (_UTF8NativeGateway), and
  the hardening headers are added as cheroot sends the answer (_SiteHeadersRequest).
- The Date header is formatted once a second, not once an answer (http_date).
- TRUST_PROXY: the client address is the one the load balancer appended, not one the
  client wrote.
"""
import collections
import email.utils
import functools
import html
import math
import select
import socket
import sys
import threading
import time

import cheroot.connections
import cheroot.makefile
import cheroot.server
import cheroot.wsgi
from cheroot.workers import threadpool
import cherrypy
from cherrypy import _cplogging, _cpnative_server, _cpwsgi_server
from cherrypy.lib import cptools, httputil

from . import logs

HEALTH_PATH = '/healthcheck'
_STOP_WORKER = threadpool._SHUTDOWNREQUEST  # what cheroot queues to end a worker thread


def error_page(status, message, traceback, version):
    """Every error page (404, 405, 413, 500...): the status line only.

    CherryPy passes a traceback only when request.show_tracebacks is on (DEV=1).
    """
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
    log_health_checks = False

    def __init__(self, appid=None, logger_root='cherrypy'):
        super().__init__(appid, logger_root)
        self.lines = collections.deque()  # append and popleft are thread-safe, without a lock
        self._writing = threading.Lock()  # keeps batches in order when flush() runs too
        self._writer = None
        self._stamp = (None, '')

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
            self.lines.append(logs.access_line(request, response))
            return
        status = (response.output_status or b'-').split(b' ', 1)[0].decode('ascii', 'replace')
        # CherryPy stores header names title-cased: dict.get skips its per-lookup
        # key.title(), which made these three lookups a third of this method.
        headers = request.headers
        atoms = (request.remote.name or request.remote.ip, self.time(),
                 _quote(request.request_line), status,
                 dict.get(response.headers, 'Content-Length') or '-',
                 _quote(dict.get(headers, 'Referer', '')),
                 _quote(dict.get(headers, 'User-Agent', '')))
        self.lines.append('%s - - %s "%s" %s %s "%s" "%s"' % atoms)

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
            if batch:
                self.access_log.info('\n'.join(batch))


def _quote(text):
    """Escape what a client sent, as Apache does: no raw quotes or control characters."""
    if text.isascii() and text.isprintable() and '"' not in text and '\\' not in text:
        return text  # nothing to escape: the usual case, in a quarter of the time
    return text.encode('unicode_escape').decode('ascii').replace('"', '\\"')


class IdleConnections(cheroot.connections.ConnectionManager):
    """cheroot's selector, with these changes.

    1. A newly accepted connection waits in the selector until it is readable, like a
       kept-alive one. cheroot hands it straight to a worker, which then blocks reading
       it: load balancers pre-open hundreds of idle connections, and those would hold
       every worker while a fresh health probe waits (measured: 500 idle connections
       made a probe time out after 5 s).
    2. Idle connections close after ops.keep_alive_timeout, not server.socket_timeout,
       so keep-alive can outlast a load balancer's idle timeout while a stalled client
       still holds a worker for only server.socket_timeout.
    3. It notes when its loop last ran, so readiness can tell a stuck listener.
    4. A burst of new connections is accepted in one round, not one per round.
    5. Stopping: what arrived is served, and the loop neither spins nor lets a worker die
       handing a connection back to a closed selector.
    6. Under load the workers look for ready connections themselves, between requests
       (look_between_requests), and the selector thread sleeps.
    """

    _queue = None  # the PacedQueue whose workers look; None: cheroot's own selector loop

    def __init__(self, server):
        super().__init__(server)
        self._looking = threading.Lock()  # one looker at a time: no connection handed out twice
        self._room = threading.Event()    # PacedQueue: a thread could start one more request
        if hasattr(server.requests._queue, 'has_room'):  # a PacedQueue, not cheroot's queue
            self._queue = server.requests._queue
            self._queue.look = self.look_between_requests
            self._queue.on_room = self._room.set

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
            finally:
                self._looking.release()

    def _run(self, expiration_interval):
        """The selector thread: it looks only while a worker could start a request now. While
        the running threads are all busy (PacedQueue.has_room), a request it handed out would
        only wait in the queue, and the workers look when they finish."""
        if self._queue is None:
            return super()._run(expiration_interval)
        last_expiry = time.time()
        while not self._stop_requested:
            self._room.clear()  # before the check: a worker's set() after it wakes the wait
            if self._queue.has_room():
                with self._looking:
                    self._hand_out_ready(timeout=expiration_interval)
            else:
                self._room.wait(expiration_interval)
            if time.time() - last_expiry > expiration_interval:
                with self._looking:
                    self._expire(None)
                last_expiry = time.time()

    def _hand_out_ready(self, timeout):
        """One round of cheroot's selector loop: accept new connections, queue ready ones."""
        try:
            ready = list(self._selector.select(timeout=timeout))
        except OSError:
            self._remove_invalid_sockets()
            return
        for fd, conn in ready:
            if conn is self.server:
                self._from_server_socket(self.server.socket)
            else:
                self._selector.unregister(fd)  # until the worker put()s it back
                self.server.process_conn(conn)

    def _from_server_socket(self, server_socket):
        # Accept every connection the kernel has queued, not one per loop: with 100 busy
        # workers each loop waits for the GIL, and accepting 100 connections one by one took
        # 1.7 s. wrk -c100 on /: p99 1.3 s and 22 timeouts before, 150 ms and none after.
        # The listener is non-blocking (TunedServer.prepare): stop at "no more".
        for _ in range(self.server.request_queue_size):
            conn = super()._from_server_socket(server_socket)
            if conn is None:
                break
            self.put(conn)  # registers it with the selector; a worker gets it when readable
        return None

    def put(self, conn):
        try:
            super().put(conn)
        except (ValueError, OSError):  # a stop closed the selector after the worker's answer
            conn.close()

    def stop(self):
        self._stop_requested = True
        self._room.set()  # the selector thread stops waiting for room: it has to stop
        super().stop()

    def run(self, expiration_interval):
        if self._stop_requested:  # TunedServer.stop() is serving what arrived: cheroot's
            time.sleep(0.05)      # serve() would call run() again at once, spinning
            return
        super().run(expiration_interval)

    def _expire(self, threshold):
        self.server.last_loop = time.monotonic()
        super()._expire(time.time() - self.server.keep_alive_timeout)

    def serve_arrived(self, wait=0.5):
        """At shutdown: accept what the kernel queued, hand every connection that has a
        request waiting to a worker, so that no request sent before the stop is lost."""
        with self._looking:  # a worker may be looking still; after this, none does
            self._serve_arrived(wait)

    def _serve_arrived(self, wait):
        listener = self.server.socket
        while True:
            try:
                conn = self._from_server_socket(listener)
            except OSError:
                break
            if conn is None and not _readable(listener, 0):
                break
        deadline = time.monotonic() + wait
        while len(self._selector) > 1 and time.monotonic() < deadline:
            ready = [(fd, conn) for fd, conn in self._selector.select(timeout=0.05)
                     if conn is not self.server]
            for fd, conn in ready:
                self._selector.unregister(fd)
                self.server.process_conn(conn)
            if not ready:
                break


def _readable(sock, seconds):
    """Whether sock has data (or EOF) within `seconds`; poll, since select() stops at fd 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(seconds * 1000))


class _HeadersWithBodyWriter(cheroot.makefile.StreamWriter):
    """cheroot's socket writer, holding an answer's status line and headers back until the
    first piece of its body, so that a small answer leaves in one send(), not two: one
    system call and one release of the GIL fewer per request. Later pieces go out as
    written (streamed answers are not delayed), and so does "100 Continue"."""

    hold_headers = False  # set for each request by TunedConnection
    failed = False  # a send failed (client gone, or stalled past server.socket_timeout)

    def write(self, data):
        if self.hold_headers and data.endswith(b'\r\n\r\n') and b' 100 ' not in data[:13]:
            self.hold_headers = False
            self._write_buf.extend(data)  # sent with the next write, or at the request's end
            return len(data)
        try:
            return super().write(data)
        except OSError:
            self.failed = True
            raise


class _BufferedLineReader(cheroot.makefile.StreamReader):
    """cheroot's socket reader, answering readline() straight from its buffer.

    cheroot reads through _pyio, Python's io module written in Python (it looks into the
    buffer to tell whether a pipelined request has arrived), so each request and header
    line cost a dozen Python calls. Here a line already in the buffer is one bytes.find():
    27% fewer instructions in cheroot for a browser's request (perf stat, 8 lines).
    """

    def readline(self, size=-1):
        if self._read_pos >= len(self._read_buf):
            self.peek(1)  # one recv() into the empty buffer, as _pyio's readline does
        buf, start = self._read_buf, self._read_pos
        limit = len(buf) if size is None or size < 0 else min(len(buf), start + size)
        newline = buf.find(b'\n', start, limit)
        if newline >= 0:
            end = newline + 1
        elif size is not None and 0 <= size == limit - start:
            end = limit  # `size` bytes without a newline: where readline(size) stops
        else:
            return super().readline(size)  # the line goes on past the buffer: _pyio reads on
        self._read_pos = end
        self.bytes_read += end - start
        return buf[start:end]


class _SiteHeadersRequest(_cpwsgi_server.CPWSGIHTTPRequest):
    """cheroot's request (in CherryPy's URL mode), adding the server's site headers (prod.conf's
    ops.response_headers) to every answer that does not set them itself, errors included.

    Through CherryPy's response.headers config instead, each header went through its header
    map and was encoded three times: 24k instructions a header, per request.
    """

    def send_headers(self):
        own = {name.lower() for name, _ in self.outheaders}
        self.outheaders.extend(header for name, header in self.server.site_headers
                               if name not in own)
        super().send_headers()


class _UTF8NativeGateway(_cpnative_server.NativeGateway):
    """CherryPy's gateway without WSGI. Like CherryPy's WSGI adapter, it reads the URL as
    UTF-8 (the native one reads Latin-1, and /static/café.txt would be a 404)."""

    def respond(self):
        req = self.req
        try:
            req.path, req.qs = req.path.decode('utf-8'), req.qs.decode('utf-8')
        except UnicodeDecodeError:
            pass  # as the WSGI adapter does: Latin-1, and let the handler decide
        super().respond()


class TunedConnection(cheroot.server.HTTPConnection):
    """A plain-HTTP connection that reads lines from its buffer (_BufferedLineReader), sends
    small answers in one send() (_HeadersWithBodyWriter) and adds the site headers
    (_SiteHeadersRequest). TLS sockets keep cheroot's own reader and writer."""

    RequestHandlerClass = _SiteHeadersRequest

    def __init__(self, server, sock, makefile=cheroot.makefile.MakeFile):
        super().__init__(server, sock, makefile)
        if makefile is cheroot.makefile.MakeFile:
            self.rfile = _BufferedLineReader(sock, 'rb', self.rbufsize)
            self.wfile = _HeadersWithBodyWriter(sock, 'wb', self.wbufsize)

    def communicate(self):
        wfile = self.wfile
        if not isinstance(wfile, _HeadersWithBodyWriter):
            return super().communicate()
        wfile.hold_headers = True
        keep_open = False
        try:
            keep_open = super().communicate()
        finally:
            wfile.hold_headers = False
            if wfile.failed:  # what was not sent stays unsent: no second wait, and close
                wfile.failed, keep_open = False, False
                del wfile._write_buf[:]
            elif wfile._write_buf:  # held headers of an answer without a body: HEAD, 304
                try:
                    wfile.flush()
                except OSError:
                    del wfile._write_buf[:]
                    keep_open = False  # the client is gone or stalled: close
        return keep_open


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

    def __init__(self, threads):
        self.max_active = threads
        self.active = 1
        self.closed = False
        self.core = _cpu_limit()  # "a core" under a container CPU limit below one
        self._lock = threading.Lock()
        self._items = collections.deque()  # connections with a request waiting, oldest first
        self._idle = []  # sleeping threads, most recently idle last
        self._busy = set()  # the _Waiters of threads on a request (the watchdog looks at these)
        self._stalled = 0  # ...of which on the same one for over STALL (the watchdog counts)
        self._local = threading.local()
        threading.Thread(target=self._watch, name='paced queue', daemon=True).start()

    def qsize(self):
        return len(self._items)

    def put(self, item, block=True, timeout=None):
        with self._lock:
            self._items.append(item)  # in order: a stop never overtakes a waiting request
            self._hand_out()

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
                return self._take(waiter, self._items.popleft())  # no sleep, no switch
            self._idle.append(waiter)
            room = self.has_room()
        if room:  # this thread stops looking between requests: the selector thread looks
            self.on_room()
        waiter.wake.acquire()  # sleeps until _hand_out() gives this thread an item
        return waiter.item

    def look(self):
        """Set by IdleConnections: a worker with nothing queued looks for ready connections."""

    def on_room(self):
        """Set by IdleConnections: called when has_room() may have turned true."""

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
            self._hand_out()
            room = self.has_room()
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
    site_headers = ()  # (lower-case name, (name, value)), as bytes; see _SiteHeadersRequest

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
        pool._queue = PacedQueue(pool.min)
        pool.get = pool._queue.get
        self.last_loop = time.monotonic()  # a restart is not a stuck selector
        try:
            super().prepare()
        except BaseException:
            pool._queue.closed = True  # its watchdog ends
            raise
        self.socket.setblocking(False)  # accept() only after the selector said "readable"
        self._connections.close()  # cheroot's manager, replaced before serve() starts
        self._connections = IdleConnections(self)
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
        if self.ready and self.socket is not None:
            self._connections.stop()  # the selector loop; cheroot's stop() would close
            self._connections.serve_arrived()  # ...queued connections unanswered
        super().stop()
        self.requests._queue.closed = True  # its watchdog ends


class Server(TunedServer, _cpwsgi_server.CPWSGIServer):
    """CherryPy's server (cherrypy.server) with the template's connection handling."""

    def __init__(self, server_adapter):
        super().__init__(server_adapter)
        # CPWSGIServer has just set TunedConnection's request class to its own; ours extends it.
        TunedConnection.RequestHandlerClass = _SiteHeadersRequest
        # CherryPy's native gateway: cheroot hands each request to CherryPy as it is. Through
        # WSGI, cheroot built an environ that CherryPy translated back: 16% of a request.
        self.gateway = _UTF8NativeGateway


class AdminServer(TunedServer, cheroot.wsgi.Server):
    """A plain cheroot WSGI server for the admin listener, tuned the same way."""


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
    cptools.proxy(remote=None, local=None, scheme='X-Forwarded-Proto')  # scheme
    forwarded = request.headers.get('X-Forwarded-For', '')
    client = forwarded.rsplit(',', 1)[-1].strip()
    if client:
        request.remote.ip = request.remote.name = client


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
    cherrypy.engine.subscribe('start', app.log.start_writer)
    cherrypy.engine.subscribe('exit', app.log.flush)  # no line lost at exit


def install(app, config):
    """Apply the pieces above to the main app and to CherryPy's server."""
    configure_app(app, config)
    httputil.HTTPDate = http_date  # CherryPy looks it up on each use
    cherrypy.server.httpserver = Server(cherrypy.server)
    cherrypy.server.httpserver.tune(config['ops.keep_alive_timeout'], config['ops.keep_alive_limit'],
                                    config['ops.response_headers'])


def check_port_free(config):
    """One clear line and exit 1 if a port is taken, instead of a traceback or a wait."""
    host = config['server.socket_host']
    for name, port in (('PORT', config['server.socket_port']), ('ADMIN_PORT', config['ops.admin_port'])):
        if not port:
            continue
        try:
            socket.create_server((host, port)).close()
        except OSError as error:
            print(f'{name}={port}: cannot listen on {host}:{port}: {error.strerror or error}',
                  file=sys.stderr)
            raise SystemExit(1)
