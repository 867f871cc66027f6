"""Hostile-client check (issue 13): the server tried from the attacker's side, black-box.

Starts the real server (`run.main()` as `python run.py` does, settings by environment) on
loopback with a few test-only pages, then attacks it with raw sockets:

    framing     the framing/header-syntax table: 400 (501 unknown coding, 431 big headers)
                and the connection closed; never a 500, a traceback or "CherryPy/<version>";
                a request pipelined behind each bad one must never run
    smuggling   unread bodies (chunked and Content-Length) with a request hidden in them and
                a victim's request pipelined behind: /smuggled never runs, the victim gets
                the landing page or a closed connection, never someone else's answer
    timeout     a connection that sends nothing (or half a request) is answered 408 or
                closed at server.socket_timeout, not held for the 65 s keep-alive
    flood       50 clients sending bad requests for 10 s: the log stays small
    slowloris   600 connections sending a header line every 5 s: >= 95 % of fresh GET /
                answered within 5 s
    slowbody    600 connections sending a POST body slowly to a handler that reads it: same
    slowread    600 connections asking for four 1 MiB answers each and reading 1 byte a
                second: the same share of fresh GET /; no traceback flood in the log
    nofile      the server under a soft nofile of 1,024 (hard kept, then hard 1,024 too),
                2,000 idle connections: it stays up, serves GET / within 5 s afterwards and
                writes fewer than 2,000 log lines

Prints tables and ends with "N passed, N failed"; exits 1 if a check fails. Standard library
only. Run it with .ci/hostile.sh (a venv of requirements.txt, a higher open-files limit).

    python .ci/hostile.py [--repo PATH] [--only framing,smuggling,...]

Bounded: at most 2,000 client connections open at once (and at most 2,000 opened per slow
phase), loopback only, about 3 minutes; a watchdog stops every server it started (by PID)
and exits at RUN_LIMIT seconds.
"""
import argparse
import asyncio
import os
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HOST = '127.0.0.1'
HERE = os.path.dirname(os.path.abspath(__file__))
RUN_LIMIT = 255.0          # seconds; .ci/hostile.sh kills the driver at 270
MAX_CONNECTIONS = 2000     # client connections open at once, in any phase
SLOW_PERIOD = 5.0          # slowloris / slow body: one header line or body piece every 5 s
PROBES = 100               # fresh GET / during a slow phase ...
PROBE_SPREAD = 20.0        # ... spread over this many seconds,
PROBE_LIMIT = 5.0          # each answered within this many seconds (connect included),
PROBE_TARGET = 0.95        # for this share of them.
SLOW_READ_PIPELINED = 4    # 1 MiB answers asked for at once by each slow reader
LANDING_MARK = b'It works!'

# The server as a user runs it (run.main(): prod.conf, then environment variables), plus
# test-only pages that do not read the request body unless they say so:
#   /echo      reads the whole body (request.body.read()) and says how many bytes
#   /noread    answers without reading the body
#   /smuggled  records every request that reaches it (any method): it must never run
#   /hits      the requests /smuggled recorded, one per line
#   /big       a 1 MiB answer from memory, /bigfile a 1 MiB file (as static files are served)
SERVER = r'''
import os, cherrypy, run
from cherrypy.lib import static
BIG = b'x' * (1 << 20)
BIG_FILE = os.environ['HOSTILE_BIG_FILE']
HITS = []
RAW = {'request.process_request_body': False, 'tools.allow.on': False, 'tools.gzip.on': False}
READS = {'tools.allow.on': False, 'tools.gzip.on': False}  # CherryPy leaves a body of no or an
# unknown Content-Type to the handler: request.body.read(), as a user's handler would
def echo(self, *args, **kwargs):
    return 'read %d bytes' % len(cherrypy.request.body.read())
def noread(self, *args, **kwargs):
    return 'not read'
def smuggled(self, *args, **kwargs):
    HITS.append(cherrypy.request.request_line)
    return 'smuggled'
def hits(self, *args, **kwargs):
    return '\n'.join(HITS)
def big(self, *args, **kwargs):
    return BIG
def bigfile(self, *args, **kwargs):
    return static.serve_file(BIG_FILE, 'application/octet-stream')
for page in (echo, noread, smuggled, hits, big, bigfile):
    page._cp_config = READS if page is echo else RAW
    page.exposed = True
    setattr(run.Landing, page.__name__, page)
run.main()
'''

RESULTS = []
OUT_LOCK = threading.Lock()


def say(text=''):
    with OUT_LOCK:
        print(text, flush=True)


def check(name, ok, detail=''):
    RESULTS.append((name, bool(ok), detail))
    say(f'{"ok  " if ok else "FAIL"} {name}' + (f': {detail}' if detail else ''))
    return ok


# ---------------------------------------------------------------------------------------------
# Servers: started with `python -c SERVER` in the checkout, stopped by PID.

SERVERS = []  # every server process started, for the watchdog and the final cleanup


def free_port(taken=()):
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port


class Server:
    def __init__(self, repo, name, env=None, nofile=None, workdir=None):
        self.repo, self.name, self.nofile = repo, name, nofile
        self.port = free_port()
        self.admin_port = free_port({self.port})
        self.log_path = os.path.join(workdir, f'{name}.log')
        names = server_variables(repo)
        self.env = {k: v for k, v in os.environ.items() if k not in names}  # as shipped
        self.env.update(HOST=HOST, PORT=str(self.port), ADMIN_PORT=str(self.admin_port),
                        SHUTDOWN_TIMEOUT='2', PYTHONUNBUFFERED='1',
                        HOSTILE_BIG_FILE=big_file(workdir))
        self.env.update(env or {})
        self.proc = None

    def start(self):
        nofile = self.nofile

        def limit():  # in the child, before exec: the server's own open-files limit
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

        self.log = open(self.log_path, 'wb')
        self.proc = subprocess.Popen([sys.executable, '-c', SERVER], cwd=self.repo, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=limit)
        SERVERS.append(self.proc)
        return self

    def wait_ready(self, limit=30.0):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f'server {self.name} exited ({self.proc.returncode}):\n'
                                   + self.log_tail())
            try:
                result = exchange(self.port, get(), answer_wait=1.0, close_wait=0)
                if result.finals()[:1] == [200]:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f'server {self.name} not answering GET / after {limit:.0f} s:\n'
                           + self.log_tail())

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log.close()

    def log_bytes(self):
        with open(self.log_path, 'rb') as f:
            return f.read()

    def log_mark(self):
        """(lines, tracebacks) written so far: subtract two marks to count a window."""
        data = self.log_bytes()
        return data.count(b'\n'), data.count(b'Traceback (most recent call last)'), len(data)

    def log_tail(self, chars=1500):
        return self.log_bytes()[-chars:].decode('utf-8', 'replace')

    def log_window(self, mark):
        data = self.log_bytes()[mark[2]:]
        return data.decode('utf-8', 'replace')

    def smuggled_hits(self):
        result = exchange(self.port, get('/hits'), answer_wait=5.0, close_wait=0)
        if result.finals()[:1] != [200]:
            raise RuntimeError(f'/hits did not answer 200: {result.summary()}')
        body = result.responses[0].body.decode('latin-1')
        return [line for line in body.split('\n') if line]


def big_file(workdir):
    path = os.path.join(workdir, 'big.bin')
    if not os.path.exists(path):
        with open(path, 'wb') as f:
            f.write(os.urandom(1 << 20))
    return path


def server_variables(repo):
    """The server's environment variable names (settings.VARIABLES), read from its source."""
    path = os.path.join(repo, 'server', 'settings.py')
    try:
        text = open(path, encoding='utf-8').read()
    except OSError:
        return set()
    block = text.split('VARIABLES = {', 1)[-1].split('\n}', 1)[0]
    return set(re.findall(r"^\s*'([A-Z_]+)':", block, re.M))


def socket_timeout(repo):
    """server.socket_timeout: SOCKET_TIMEOUT if the settings read it (we set 5), else prod.conf's."""
    if 'SOCKET_TIMEOUT' in server_variables(repo):
        return 5.0, {'SOCKET_TIMEOUT': '5'}
    try:
        text = open(os.path.join(repo, 'prod.conf'), encoding='utf-8').read()
        match = re.search(r'^server\.socket_timeout\s*[:=]\s*([0-9.]+)', text, re.M)
        return (float(match.group(1)) if match else 10.0), {}
    except OSError:
        return 10.0, {}


# ---------------------------------------------------------------------------------------------
# Raw HTTP: requests as bytes, answers parsed from what came back.

def get(path='/', extra=b''):
    return b'GET ' + path.encode() + b' HTTP/1.1\r\nHost: ' + HOST.encode() + b'\r\n' + extra + b'\r\n'


class Response:
    def __init__(self, status, headers, body, head):
        self.status, self.headers, self.body, self.head = status, headers, body, head


def parse_responses(buf, closed, head_first=False):
    """Complete responses at the start of buf; (responses, garbage or None)."""
    out = []
    while buf:
        if not buf.startswith(b'HTTP/'):
            return out, buf[:60]
        end = buf.find(b'\r\n\r\n')
        if end < 0:
            return out, (buf[:60] if closed else None)
        head = buf[:end].decode('latin-1')
        lines = head.split('\r\n')
        parts = lines[0].split(' ', 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return out, buf[:60]
        status = int(parts[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(':')
            headers.setdefault(key.strip().lower(), value.strip())
        pos = end + 4
        no_body = 100 <= status < 200 or status in (204, 304) or (head_first and not out)
        if no_body:
            body = b''
        elif 'chunked' in headers.get('transfer-encoding', '').lower():
            body, used = b'', pos
            while True:
                eol = buf.find(b'\r\n', used)
                if eol < 0:
                    return out, (buf[:60] if closed else None)
                try:
                    size = int(buf[used:eol].split(b';')[0], 16)
                except ValueError:
                    return out, buf[used:used + 60]
                if size == 0:
                    trailer_end = buf.find(b'\r\n\r\n', eol)
                    if trailer_end < 0 and buf[eol:eol + 4] != b'\r\n\r\n':
                        return out, None
                    used = (trailer_end if trailer_end >= 0 else eol) + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return out, (buf[:60] if closed else None)
                body += buf[eol + 2:eol + 2 + size]
                used = eol + 2 + size + 2
            pos = used
        elif 'content-length' in headers:
            try:
                length = int(headers['content-length'])
            except ValueError:
                return out, buf[:60]
            if len(buf) < pos + length:
                return out, (buf[:60] if closed else None)
            body, pos = buf[pos:pos + length], pos + length
        elif closed:
            body, pos = buf[pos:], len(buf)
        else:
            return out, None
        out.append(Response(status, headers, body, head))
        buf = buf[pos:]
    return out, None


class Exchange:
    def __init__(self):
        self.raw, self.responses, self.garbage = b'', [], None
        self.closed = None        # 'eof', 'reset', or None (still open when we stopped)
        self.send_error = None
        self.elapsed = 0.0

    def finals(self):
        return [r.status for r in self.responses if r.status >= 200]

    def leaks(self):
        found = []
        if re.search(rb'Traceback|File "', self.raw):
            found.append('traceback in answer')
        if re.search(rb'CherryPy/\d', self.raw):
            found.append('version in answer')
        return found

    def summary(self):
        statuses = ','.join(str(r.status) for r in self.responses) or 'no answer'
        state = {'eof': 'closed', 'reset': 'closed (reset)', None: 'open'}[self.closed]
        text = f'{statuses}, {state}'
        if self.garbage is not None:
            text += f', unparsable {self.garbage[:30]!r}'
        return ' '.join([text] + self.leaks())


def exchange(port, payload, answer_wait=3.0, close_wait=1.0, shut_wr=False, head=False,
             rcvbuf=None):
    """Send payload (from a thread, so a big one cannot deadlock) and collect what comes back:
    until the server closes, answer_wait passes without a final answer, or close_wait passes
    after the last complete final answer."""
    result = Exchange()
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    start = time.monotonic()
    try:
        s.connect((HOST, port))

        def send():
            try:
                s.sendall(payload)
                if shut_wr:
                    s.shutdown(socket.SHUT_WR)
            except OSError as error:
                result.send_error = error.__class__.__name__

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        deadline, finals = start + answer_wait, 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not select.select([s], [], [], left)[0]:
                break
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                result.closed = 'reset'
                break
            if not data:
                result.closed = 'eof'
                break
            result.raw += data
            responses, _ = parse_responses(result.raw, False, head)
            done = len([r for r in responses if r.status >= 200])
            if done > finals:
                finals, deadline = done, time.monotonic() + close_wait
        sender.join(2)
    finally:
        s.close()
    result.elapsed = time.monotonic() - start
    result.responses, result.garbage = parse_responses(result.raw, result.closed is not None, head)
    return result


# ---------------------------------------------------------------------------------------------
# 1. The framing table.

H = b'Host: 127.0.0.1\r\n'


def post(headers, body=b'', target=b'/echo', version=b'HTTP/1.1', method=b'POST'):
    return method + b' ' + target + b' ' + version + b'\r\n' + H + headers + b'\r\n' + body


def chunked(body, target=b'/echo'):
    return post(b'Transfer-Encoding: chunked\r\n', body, target)


def raw(line, headers=H):
    return line + b'\r\n' + headers + b'\r\n'


BARE_LF_END = b'POST /echo HTTP/1.1\r\n' + H + b'Content-Length: 5\n\nhello'
BAD, UNKNOWN_CODING, TOO_BIG, GONE = {400}, {400, 501}, {431}, 0  # GONE: closed without answer

# (name, request, expected final statuses, must close, answer body must contain)
# Every "must close" case is followed on the same connection by GET /smuggled?case=N: it must
# never run (the server must not read past a request it rejected).
CASES = [
    # Positive controls: a correct server keeps these working (and the connection open).
    ('control: GET /', get(), {200}, False, LANDING_MARK),
    ('control: POST Content-Length 5', post(b'Content-Length: 5\r\n', b'hello'), {200}, False, b'read 5'),
    ('control: POST chunked', chunked(b'5\r\nhello\r\n0\r\n\r\n'), {200}, False, b'read 5'),
    ('control: Content-Length with OWS "  5 "', post(b'Content-Length:   5  \r\n', b'hello'), {200}, False, b'read 5'),
    ('control: chunk extension 5;a=b', chunked(b'5;a=b\r\nhello\r\n0\r\n\r\n'), {200}, False, b'read 5'),
    ('control: Transfer-Encoding: Chunked (names are case-insensitive)',
     post(b'Transfer-Encoding: Chunked\r\n', b'5\r\nhello\r\n0\r\n\r\n'), {200}, False, b'read 5'),
    ('control: Expect: 100-continue, small body', post(b'Expect: 100-continue\r\nContent-Length: 5\r\n', b'hello'),
     {200}, False, b'read 5'),
    # Content-Length / Transfer-Encoding (RFC 9112 6.1-6.3)
    ('CL + TE together', post(b'Content-Length: 5\r\nTransfer-Encoding: chunked\r\n', b'0\r\n\r\n'), BAD, True, None),
    ('TE + CL together', post(b'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n', b'0\r\n\r\n'), BAD, True, None),
    ('two differing Content-Length 5/6', post(b'Content-Length: 5\r\nContent-Length: 6\r\n', b'hello!'), BAD, True, None),
    ('Content-Length list "5, 6"', post(b'Content-Length: 5, 6\r\n', b'hello!'), BAD, True, None),
    ('Content-Length: +5', post(b'Content-Length: +5\r\n', b'hello'), BAD, True, None),
    ('Content-Length: 0_5', post(b'Content-Length: 0_5\r\n', b'hello'), BAD, True, None),
    ('Content-Length: -1', post(b'Content-Length: -1\r\n', b'hello'), BAD, True, None),
    ('Content-Length: "5 5"', post(b'Content-Length: 5 5\r\n', b'hello'), BAD, True, None),
    ('Content-Length: VT 5 (\\x0b is not OWS)', post(b'Content-Length: \x0b5\r\n', b'hello'), BAD, True, None),
    ('Content-Length: 0x5', post(b'Content-Length: 0x5\r\n', b'hello'), BAD, True, None),
    ('Content-Length: 5.0', post(b'Content-Length: 5.0\r\n', b'hello'), BAD, True, None),
    ('Content-Length: fullwidth digit U+FF15', post('Content-Length: \uff15\r\n'.encode(), b'hello'), BAD, True, None),
    ('Content-Length: empty', post(b'Content-Length: \r\n', b''), BAD, True, None),
    ('Content-Length: 2^64+5', post(b'Content-Length: 18446744073709551621\r\n', b'hello'), {400, 413}, True, None),
    ('Content-Length of 5,000 digits (more than int() takes)',
     post(b'Content-Length: ' + b'1' * 5000 + b'\r\n', b'hello'), {400, 413}, True, None),
    ('last header and the head ended by bare LFs', BARE_LF_END, BAD, True, None),
    ('"Content-Length : 5" (space before colon)', post(b'Content-Length : 5\r\n', b'hello'), BAD, True, None),
    ('"Transfer-Encoding : chunked" (space before colon)',
     post(b'Transfer-Encoding : chunked\r\n', b'5\r\nhello\r\n0\r\n\r\n'), BAD, True, None),
    # Chunked framing (RFC 9112 7.1)
    ('chunk size -1', chunked(b'-1\r\nhello\r\n0\r\n\r\n'), BAD, True, None),
    ('chunk size 0x5', chunked(b'0x5\r\nhello\r\n0\r\n\r\n'), BAD, True, None),
    ('chunk size 0_5', chunked(b'0_5\r\nhello\r\n0\r\n\r\n'), BAD, True, None),
    ('chunk size +5', chunked(b'+5\r\nhello\r\n0\r\n\r\n'), BAD, True, None),
    ('chunk size "5 " (trailing space)', chunked(b'5 \r\nhello\r\n0\r\n\r\n'), BAD, True, None),
    ('chunk size 2^64 (10000000000000000)', chunked(b'10000000000000000\r\nhello\r\n0\r\n\r\n'), {400, 413}, True, None),
    ('chunk size 2^64+5 (wraps to 5?)', chunked(b'10000000000000005\r\nhello\r\n0\r\n\r\n'), {400, 413}, True, None),
    ('bare-LF chunk lines', chunked(b'5\nhello\n0\n\n'), BAD, True, None),
    ('chunk data not followed by CRLF', chunked(b'5\r\nhelloXX\r\n0\r\n\r\n'), BAD, True, None),
    ('chunk extension of 40 KB', chunked(b'5;' + b'a' * 40000 + b'\r\nhello\r\n0\r\n\r\n'), {400, 413, 431}, True, None),
    ('Transfer-Encoding: xchunked', post(b'Transfer-Encoding: xchunked\r\n', b'5\r\nhello\r\n0\r\n\r\n'),
     UNKNOWN_CODING, True, None),
    ('Transfer-Encoding: chunked, gzip', post(b'Transfer-Encoding: chunked, gzip\r\n', b'5\r\nhello\r\n0\r\n\r\n'),
     UNKNOWN_CODING, True, None),
    ('Transfer-Encoding: gzip, chunked', post(b'Transfer-Encoding: gzip, chunked\r\n', b'5\r\nhello\r\n0\r\n\r\n'),
     UNKNOWN_CODING, True, None),
    ('Transfer-Encoding: chunked, chunked', post(b'Transfer-Encoding: chunked, chunked\r\n', b'5\r\nhello\r\n0\r\n\r\n'),
     UNKNOWN_CODING, True, None),
    ('Transfer-Encoding: identity', post(b'Transfer-Encoding: identity\r\n', b'5\r\nhello\r\n0\r\n\r\n'),
     UNKNOWN_CODING, True, None),
    ('Transfer-Encoding: VT chunked', post(b'Transfer-Encoding: \x0bchunked\r\n', b'5\r\nhello\r\n0\r\n\r\n'),
     UNKNOWN_CODING, True, None),
    ('Transfer-Encoding in HTTP/1.0 (faulty framing: close)',
     post(b'Transfer-Encoding: chunked\r\n', b'5\r\nhello\r\n0\r\n\r\n', version=b'HTTP/1.0'), {200, 400}, True, None),
    # Header syntax (RFC 9112 5, 9110 5.5)
    ('obs-fold continuation line', post(b'X-Fold: a\r\n b\r\nContent-Length: 0\r\n'), BAD, True, None),
    ('CR inside a header value', raw(b'GET / HTTP/1.1', H + b'X-A: a\rb\r\n'), BAD, True, None),
    ('NUL inside a header value', raw(b'GET / HTTP/1.1', H + b'X-A: a\x00b\r\n'), BAD, True, None),
    ('control \\x01 inside a header value', raw(b'GET / HTTP/1.1', H + b'X-A: a\x01b\r\n'), BAD, True, None),
    ('DEL inside a header value', raw(b'GET / HTTP/1.1', H + b'X-A: a\x7fb\r\n'), BAD, True, None),
    ('space in a header name', raw(b'GET / HTTP/1.1', H + b'X A: b\r\n'), BAD, True, None),
    ('empty header name', raw(b'GET / HTTP/1.1', H + b': b\r\n'), BAD, True, None),
    ('header line without colon', raw(b'GET / HTTP/1.1', H + b'XA\r\n'), BAD, True, None),
    ('NUL in a header name', raw(b'GET / HTTP/1.1', H + b'X\x00A: b\r\n'), BAD, True, None),
    ('NUL in the target', raw(b'GET /\x00 HTTP/1.1'), BAD, True, None),
    ('control \\x01 in the target', raw(b'GET /a\x01b HTTP/1.1'), BAD, True, None),
    ('DEL in the target', raw(b'GET /a\x7fb HTTP/1.1'), BAD, True, None),
    ('byte 0xff in the target', raw(b'GET /a\xffb HTTP/1.1'), BAD, True, None),
    ('space inside the target', raw(b'GET /a b HTTP/1.1'), BAD, True, None),
    ('two Host headers', raw(b'GET / HTTP/1.1', H + b'Host: evil.example\r\n'), BAD, True, None),
    ('HTTP/1.1 without Host', raw(b'GET / HTTP/1.1', b''), BAD, True, None),
    ('Host with a space', raw(b'GET / HTTP/1.1', b'Host: a b\r\n'), BAD, True, None),
    ('Host with a bad port', raw(b'GET / HTTP/1.1', b'Host: 127.0.0.1:8x\r\n'), BAD, True, None),
    ('whitespace-led line after the request line', raw(b'GET / HTTP/1.1', b' X-A: b\r\n' + H), BAD, True, None),
    ('tab-led line after the request line', raw(b'GET / HTTP/1.1', b'\tX-A: b\r\n' + H), BAD, True, None),
    ('oversized header (20 KB value)', raw(b'GET / HTTP/1.1', H + b'X-Big: ' + b'a' * 20000 + b'\r\n'),
     TOO_BIG, True, None),
    ('many tiny headers (10,000 x "a:b")', raw(b'GET / HTTP/1.1', H + b'a:b\r\n' * 10000), TOO_BIG, True, None),
    # Request line (RFC 9112 3)
    ('huge request line (70 KB target)', raw(b'GET /' + b'a' * 70000 + b' HTTP/1.1'), {400, 414, 431}, True, None),
    ('invalid method character G@T', raw(b'G@T / HTTP/1.1'), BAD, True, None),
    ('NUL in the method', raw(b'G\x00ET / HTTP/1.1'), BAD, True, None),
    ('two spaces after the method', raw(b'GET  / HTTP/1.1'), BAD, True, None),
    ('tab instead of space', raw(b'GET\t/ HTTP/1.1'), BAD, True, None),
    ('CR-only line ends', b'GET / HTTP/1.1\rHost: 127.0.0.1\r\r', BAD, True, None),
    ('HTTP/0.9 request "GET /"', b'GET /\r\n', {400, 505, GONE}, True, None),
    ('version HTTP/2.0 on HTTP/1 framing', raw(b'GET / HTTP/2.0'), {400, 505}, True, None),
    ('lowercase http/1.1', raw(b'GET / http/1.1'), BAD, True, None),
    ('version HTTP/1.10', raw(b'GET / HTTP/1.10'), {400, 505}, True, None),
    ('HTTP/2 prior-knowledge preface', b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', {400, 505, GONE}, True, None),
    ('TLS ClientHello on the plain port',
     bytes.fromhex('16030100a5010000a10303') + os.urandom(32) + b'\x00\x00\x04\x13\x01\x13\x02\x01\x00'
     + b'\x00\x74' + b'\x00' * 0x74, {400, GONE}, True, None),
    ('Expect: 100-continue with Content-Length 10 MB (over the cap)',
     post(b'Expect: 100-continue\r\nContent-Length: 10485760\r\n'), {413}, True, None),
    ('Expect: 100-continue without Host (refused: no body asked for)',
     b'POST /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n', BAD, True, None),
    ('Expect: 100-continue with a control character in a header',
     post(b'Expect: 100-continue\r\nX-A: a\x01\r\nContent-Length: 5\r\n'), BAD, True, None),
    ('1 MB of chunked trailers (over the header cap)',
     chunked(b'5\r\nhello\r\n0\r\n' + b'a:\r\n' * 250000 + b'\r\n'), TOO_BIG, True, None),
    # Well-framed but odd: any clean answer except 5xx; the connection may stay open.
    ('lowercase method "get"', raw(b'get / HTTP/1.1'), {400, 405, 501}, False, None),
    ('absolute-form target', raw(b'GET http://127.0.0.1/ HTTP/1.1'), {200, 400}, False, None),
    ('absolute-form naming another host', raw(b'GET http://evil.example/ HTTP/1.1'), {200, 400}, False, None),
    ('asterisk-form with GET', raw(b'GET * HTTP/1.1'), {400, 404}, False, None),
    ('CONNECT to port 22', raw(b'CONNECT 127.0.0.1:22 HTTP/1.1'), {400, 405, 501}, False, None),
    ('Content-Length in a chunked trailer', chunked(b'5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n'),
     {200, 400}, False, None),
]


def run_case(port, number, case):
    name, payload, expected, must_close, mark = case
    if must_close:
        payload += get(f'/smuggled?case={number}')
    result = exchange(port, payload, answer_wait=3.0, close_wait=1.0)
    finals = result.finals()
    problems = list(result.leaks())
    if any(s >= 500 and s not in (501, 505) for s in finals):
        problems.append('5xx')
    if finals:
        if finals[0] not in expected:
            problems.append(f'got {finals[0]}')
    elif not (GONE in expected and result.closed):
        problems.append('no answer')
    if must_close:
        if any(r.status < 200 for r in result.responses):
            problems.append('100 Continue before the rejection')
        if not result.closed:
            problems.append('kept open')
        if len(finals) > 1:
            problems.append(f'{len(finals) - 1} more answer(s) on the connection')
    else:
        if len(finals) > 1:
            problems.append('more than one answer')
        if expected == {200} and result.closed:
            problems.append('closed a good connection')
    if mark and finals[:1] == [200] and mark not in result.responses[-1].body:
        problems.append(f'body {result.responses[-1].body[:40]!r}')
    return result, problems


def framing(server):
    before = server.log_mark()
    rows = [None] * len(CASES)

    def work(index):
        try:
            rows[index] = run_case(server.port, index, CASES[index])
        except Exception as error:  # a harness or connect error: the case failed
            rows[index] = (None, [f'error {error!r}'])

    threads, queue, lock = [], list(range(len(CASES))), threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                index = queue.pop(0)
            work(index)

    for _ in range(8):
        threads.append(threading.Thread(target=worker, daemon=True))
        threads[-1].start()
    for thread in threads:
        thread.join(60)
    time.sleep(0.5)
    hits = server.smuggled_hits()
    hit_cases = {int(m) for line in hits for m in re.findall(r'case=(\d+)', line)}
    width = max(len(c[0]) for c in CASES)
    say(f'\n| {"case":{width}} | expected | got | verdict |')
    say(f'| {"-" * width} | --- | --- | --- |')
    for index, (case, (result, problems)) in enumerate(zip(CASES, rows)):
        name, _, expected, must_close, _ = case
        if index in hit_cases:
            problems = problems + ['the pipelined /smuggled RAN']
        want = '/'.join(str(s) if s else 'close' for s in sorted(expected)) + (' + close' if must_close else '')
        got = result.summary() if result else '-'
        say(f'| {name:{width}} | {want} | {got} | {"ok" if not problems else "FAIL: " + ", ".join(problems)} |')
        rows[index] = (name, problems)
    say()
    for name, problems in rows:
        check(f'framing: {name}', not problems, ', '.join(problems))
    after = server.log_mark()
    check('framing: no traceback in the server log', after[1] == before[1],
          f'{after[1] - before[1]} tracebacks, {after[0] - before[0]} log lines during the table')
    check('framing: server still up', server.alive())


# ---------------------------------------------------------------------------------------------
# 2. Reused connections and smuggling.

def hidden(tag):
    return get(f'/smuggled?s={tag}')


VICTIM = get('/', b'User-Agent: victim\r\n')


def smuggling_cases():
    cases = []
    ext = b'0;GET /smuggled?s=ext HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'  # a valid chunked body to a proxy
    cases.append(('chunked body unread, "0;GET /smuggled HTTP/1.1" chunk-ext trick',
                  post(b'Transfer-Encoding: chunked\r\n', ext, b'/noread')))
    cases.append(('chunked body unread, plain "5\\r\\nhello\\r\\n0\\r\\n\\r\\n"',
                  post(b'Transfer-Encoding: chunked\r\n', b'5\r\nhello\r\n0\r\n\r\n', b'/noread')))
    inner = hidden('chunkdata')
    cases.append(('chunked body unread, request hidden in the chunk data',
                  post(b'Transfer-Encoding: chunked\r\n', b'%x\r\n' % len(inner) + inner + b'\r\n0\r\n\r\n',
                       b'/noread')))
    inner = hidden('clnoread')
    cases.append(('Content-Length body unread by the handler (/noread)',
                  post(b'Content-Length: %d\r\n' % len(inner), inner, b'/noread')))
    inner = hidden('cl405')
    cases.append(('Content-Length body of a POST / answered 405',
                  post(b'Content-Length: %d\r\n' % len(inner), inner, b'/')))
    inner = hidden('cl404')
    cases.append(('Content-Length body of a POST to a missing page',
                  post(b'Content-Length: %d\r\n' % len(inner), inner, b'/no-such-page')))
    inner = hidden('getbody')
    cases.append(('GET / with a Content-Length body',
                  post(b'Content-Length: %d\r\n' % len(inner), inner, b'/', method=b'GET')))
    inner = hidden('expect')
    cases.append(('Expect: 100-continue, body sent anyway and unread',
                  post(b'Expect: 100-continue\r\nContent-Length: %d\r\n' % len(inner), inner, b'/noread')))
    inner = hidden('chunked404')
    cases.append(('chunked body of a POST to a missing page, request hidden in the chunk data',
                  post(b'Transfer-Encoding: chunked\r\n', b'%x\r\n' % len(inner) + inner + b'\r\n0\r\n\r\n',
                       b'/no-such-page')))
    inner = b'0\r\n\r\n' + hidden('clte')
    cases.append(('CL.TE: Content-Length covers "0" chunk and a request',
                  post(b'Content-Length: %d\r\nTransfer-Encoding: chunked\r\n' % len(inner), inner, b'/noread')))
    inner = hidden('tecl')
    cases.append(('TE.CL: Content-Length 4, the chunk holds a request',
                  post(b'Content-Length: 4\r\nTransfer-Encoding: chunked\r\n',
                       b'%x\r\n' % len(inner) + inner + b'\r\n0\r\n\r\n', b'/echo')))
    inner = hidden('xchunked')
    cases.append(('Transfer-Encoding: xchunked with Content-Length',
                  post(b'Content-Length: %d\r\nTransfer-Encoding: xchunked\r\n' % (len(inner) + 5),
                       b'0\r\n\r\n' + inner, b'/echo')))
    cases.append(('bare-LF last chunk "0\\n\\n" then a request (reading handler)',
                  post(b'Transfer-Encoding: chunked\r\n', b'0\n\n' + hidden('barelf'), b'/echo')))
    cases.append(('chunk size 2^64+5 then a request (reading handler)',
                  post(b'Transfer-Encoding: chunked\r\n',
                       b'10000000000000005\r\nhello\r\n0\r\n\r\n' + hidden('wrap'), b'/echo')))
    cases.append(('space before colon: "Content-Length : N" hiding a request',
                  post(b'Content-Length : %d\r\n' % len(hidden('spacecolon')), hidden('spacecolon'), b'/echo')))
    big = b'x' * (2 * 1024 * 1024) + hidden('overcap')
    cases.append(('Content-Length body over the 1 MiB cap, a request at its end',
                  post(b'Content-Length: %d\r\n' % len(big), big, b'/noread')))
    return cases


def smuggling(server):
    rows = []
    for name, payload in smuggling_cases():
        before = len(server.smuggled_hits())
        result = exchange(server.port, payload + VICTIM, answer_wait=5.0, close_wait=1.5)
        after = server.smuggled_hits()
        problems = list(result.leaks())
        finals = result.finals()
        if len(after) > before:
            problems.append(f'/smuggled RAN: {after[before:]!r}'[:120])
        if not finals:
            problems.append('no answer')
        elif finals[0] >= 500 and finals[0] not in (501, 505):
            problems.append(f'first answer {finals[0]}')
        answers = [r for r in result.responses if r.status >= 200]
        for extra in answers[1:2]:
            if extra.status != 200 or LANDING_MARK not in extra.body:
                problems.append(f'victim got {extra.status} {extra.body[:30]!r}')
        if len(answers) > 2:
            problems.append(f'{len(answers) - 2} answer(s) beyond the victim\'s')
        if len(answers) == 1 and not result.closed:
            problems.append('victim never answered and connection left open')
        rows.append((name, result, problems))
    width = max(len(r[0]) for r in rows)
    say(f'\n| {"smuggling / reused connection":{width}} | got | verdict |')
    say(f'| {"-" * width} | --- | --- |')
    for name, result, problems in rows:
        say(f'| {name:{width}} | {result.summary()} | {"ok" if not problems else "FAIL: " + ", ".join(problems)} |')
    say()
    for name, _, problems in rows:
        check(f'smuggling: {name}', not problems, ', '.join(problems))
    check('smuggling: server still up', server.alive())


# ---------------------------------------------------------------------------------------------
# Extra: pipelined flood and half-close.

def pipelined_flood(server, count=1000):
    result = exchange(server.port, VICTIM * count, answer_wait=10.0, close_wait=2.0)
    statuses = result.finals()
    bad = [s for s in statuses if s != 200]
    ok = result.garbage is None and not bad and not result.leaks() and server.alive() and (
        len(statuses) == count or result.closed)
    check(f'pipelined flood: {count} GET / in one write answered in order (or closed at a limit)', ok,
          f'{len(statuses)} answered ({len(bad)} not 200), {"closed" if result.closed else "open"}')
    fresh = exchange(server.port, get(), answer_wait=5.0, close_wait=0)
    check('pipelined flood: fresh GET / answered afterwards', fresh.finals()[:1] == [200], fresh.summary())


def pipelined_unparsable(server):
    """A head behind a good request, read when the worker hands the connection back: an
    error there stopped the whole server (cheroot takes it as fatal)."""
    for name, bad in (('Content-Length of 5,000 digits', post(b'Content-Length: ' + b'1' * 5000 + b'\r\n')),
                      ('a head ended by bare LFs', BARE_LF_END)):
        result = exchange(server.port, get() + bad, answer_wait=5.0, close_wait=1.0)
        finals = result.finals()
        check(f'pipelined behind GET /: {name} is refused and the server lives',
              finals[:1] == [200] and finals[1:] in ([400], [413]) and not result.leaks()
              and server.alive() and exchange(server.port, get(), answer_wait=5.0, close_wait=0).finals() == [200],
              result.summary())


def half_close(server):
    result = exchange(server.port, get(), answer_wait=5.0, close_wait=1.0, shut_wr=True)
    check('half-close: GET / then FIN still gets its 200, then the connection closes',
          result.finals() == [200] and result.closed is not None, result.summary())


# ---------------------------------------------------------------------------------------------
# 4. Idle and stalled connections: 408 or closed at socket_timeout.

def timeouts(server, seconds):
    cases = [('sends nothing', b''),
             ('sends half a head', b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n'),
             ('sends 10 of 100 body bytes', post(b'Content-Length: 100\r\n', b'0123456789'))]
    results = [None] * len(cases)

    def one(index):
        results[index] = exchange(server.port, cases[index][1], answer_wait=seconds + 8, close_wait=0.5)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 15)
    for (name, _), result in zip(cases, results):
        if result is None:
            check(f'timeout: a connection that {name}', False, 'harness did not finish')
            continue
        finals = result.finals()
        ok = (result.closed is not None and result.elapsed <= seconds + 2.5 and not result.leaks()
              and (result.raw == b'' or (finals == [408] and result.garbage is None)))
        what = (f'{result.summary()} after {result.elapsed:.1f} s' if result.closed
                else f'still open after {result.elapsed:.1f} s')
        check(f'timeout: a connection that {name} gets 408 or is closed by socket_timeout ({seconds:.0f} s)',
              ok, what)


# ---------------------------------------------------------------------------------------------
# 6. Log flood: 50 clients sending bad requests for 10 s.

FLOOD_REQUESTS = [
    raw(b'GET / HTTP/1.1', b' X-A: b\r\n' + H),        # whitespace-led line
    chunked(b'5\nhello\n0\n\n'),                        # bare-LF chunk lines
    chunked(b'10000000000000000\r\nhello\r\n0\r\n\r\n'),  # 2^64 chunk size
    raw(b'GET /\x00 HTTP/1.1'),                          # NUL in the target
    raw(b'GET / HTTP/1.1', b''),                         # no Host
]


async def flood_client(port, stop, counts, index):
    loop = asyncio.get_running_loop()
    while time.monotonic() < stop:
        s = socket.socket()
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, (HOST, port)), 2)
            await loop.sock_sendall(s, FLOOD_REQUESTS[index % len(FLOOD_REQUESTS)])
            counts['sent'] += 1
            while await asyncio.wait_for(loop.sock_recv(s, 65536), 1.0):
                pass
        except (OSError, asyncio.TimeoutError):
            counts['errors'] += 1
        finally:
            s.close()
        index += 1


def log_flood(server, seconds=10.0, clients=50):
    before = server.log_mark()
    counts = {'sent': 0, 'errors': 0}

    async def main():
        stop = time.monotonic() + seconds
        await asyncio.gather(*(flood_client(server.port, stop, counts, i) for i in range(clients)))

    asyncio.run(main())
    time.sleep(1.0)  # the access log is written in batches
    after = server.log_mark()
    lines, tracebacks, size = after[0] - before[0], after[1] - before[1], after[2] - before[2]
    check(f'log flood: {clients} clients, bad requests for {seconds:.0f} s: fewer than 200 log lines',
          lines < 200 and server.alive(),
          f'{counts["sent"]} bad requests -> {lines} lines, {tracebacks} tracebacks, {size / 1e6:.1f} MB'
          + ('' if server.alive() else ', server DIED'))


# ---------------------------------------------------------------------------------------------
# 3. Slow clients: slowloris, slow bodies, slow readers; fresh GET / meanwhile.

class SlowStats:
    def __init__(self):
        self.opened = self.open_now = self.closed_by_server = self.connect_failed = 0
        self.budget = MAX_CONNECTIONS - PROBES
        self.answers = {}
        self.received = 0


async def attacker(kind, port, stats, stop, number):
    loop = asyncio.get_running_loop()
    index = 0
    while not stop.is_set() and stats.budget > 0:
        stats.budget -= 1
        s = socket.socket()
        if kind == 'slowread':
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(s, (HOST, port)), 5)
            if kind == 'slowloris':
                await loop.sock_sendall(s, b'GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n')
            elif kind == 'slowbody':
                await loop.sock_sendall(s, post(b'Content-Length: 1000000\r\nContent-Type: application/octet-stream\r\n'))
            else:  # half of them a file (as /logo.png is served), half an answer from memory;
                # four pipelined, more than the kernel's socket buffers take off the server
                await loop.sock_sendall(s, get('/bigfile' if number % 2 else '/big') * SLOW_READ_PIPELINED)
        except (OSError, asyncio.TimeoutError):
            stats.connect_failed += 1
            s.close()
            await asyncio.sleep(1)
            continue
        stats.opened += 1
        stats.open_now += 1
        try:
            while not stop.is_set():
                if kind == 'slowread':
                    await asyncio.sleep(1.0)
                    data = await asyncio.wait_for(loop.sock_recv(s, 1), 1.0)
                    if not data:
                        break
                    stats.received += 1
                    continue
                try:
                    data = await asyncio.wait_for(loop.sock_recv(s, 4096), SLOW_PERIOD)
                except asyncio.TimeoutError:
                    index += 1
                    await loop.sock_sendall(s, b'X-Loris-%d: %d\r\n' % (index, index) if kind == 'slowloris'
                                            else b'x' * 16)
                    continue
                if data:
                    status = data[9:12].decode('latin-1', 'replace') if data.startswith(b'HTTP/') else '?'
                    stats.answers[status] = stats.answers.get(status, 0) + 1
                break
        except asyncio.TimeoutError:
            pass  # slow reader: nothing arrived in a second, try again
        except OSError:
            pass
        finally:
            stats.open_now -= 1
            if not stop.is_set():
                stats.closed_by_server += 1
            s.close()


async def probe(port):
    """A fresh GET /: seconds until its whole answer, or None if not 200 within PROBE_LIMIT."""
    loop = asyncio.get_running_loop()
    s = socket.socket()
    s.setblocking(False)
    start = time.monotonic()
    try:
        async with asyncio.timeout(PROBE_LIMIT):
            await loop.sock_connect(s, (HOST, port))
            await loop.sock_sendall(s, get('/', b'User-Agent: probe\r\n'))
            buf = b''
            while True:
                data = await loop.sock_recv(s, 65536)
                if not data:
                    break
                buf += data
                responses, _ = parse_responses(buf, False)
                if responses:
                    break
        responses, _ = parse_responses(buf, True)
        if responses and responses[0].status == 200:
            return time.monotonic() - start
    except (OSError, TimeoutError):
        pass
    finally:
        s.close()
    return None


async def slow_phase_run(kind, port, count):
    stats, stop = SlowStats(), asyncio.Event()
    ramp = asyncio.Semaphore(100)

    async def start_one(number):
        async with ramp:
            await asyncio.sleep(0)
        await attacker(kind, port, stats, stop, number)

    attackers = [asyncio.create_task(start_one(number)) for number in range(count)]
    await asyncio.sleep(5.0)  # connections opened and their first bytes in
    opened_at_start = stats.open_now
    samples, probes = [], []
    start = time.monotonic()
    for i in range(PROBES):
        due = start + PROBE_SPREAD * i / PROBES
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        samples.append(stats.open_now)
        probes.append(asyncio.create_task(probe(port)))
    latencies = await asyncio.gather(*probes)
    stop.set()
    await asyncio.wait(attackers, timeout=3)
    for task in attackers:
        task.cancel()
    return stats, latencies, opened_at_start, samples


def slow_phase(server, kind, count, label):
    before = server.log_mark()
    stats, latencies, at_start, samples = asyncio.run(slow_phase_run(kind, server.port, count))
    time.sleep(0.5)
    after = server.log_mark()
    answered = [t for t in latencies if t is not None]
    share = len(answered) / len(latencies)
    p = sorted(answered)
    median = f'{p[len(p) // 2] * 1000:.0f} ms' if p else '-'
    detail = (f'{len(answered)}/{len(latencies)} answered within {PROBE_LIMIT:.0f} s (median {median}); '
              f'attack: {at_start} open at start, {min(samples)}-{max(samples)} open while probing, '
              f'{stats.opened} opened in all, {stats.closed_by_server} closed by the server '
              f'(answers {stats.answers or "none"}), {stats.connect_failed} connects failed')
    if kind == 'slowread':
        detail += f', {stats.received} bytes read'
    # Slow readers: what a client has not taken waits in its connection's outbox (a static file
    # as the open file) and the selector sends it; the worker is free at once.
    check(f'{label}: >= {PROBE_TARGET:.0%} of fresh GET / within {PROBE_LIMIT:.0f} s', share >= PROBE_TARGET, detail)
    lines, tracebacks = after[0] - before[0], after[1] - before[1]
    window = server.log_window(before)
    other = [line for line in window.splitlines() if line and not re.match(r'\S+ - - \[', line)]
    check(f'{label}: no traceback flood in the log', tracebacks <= 5 and len(other) < 200,
          f'{tracebacks} tracebacks, {len(other)} non-access lines of {lines}')
    check(f'{label}: server still up', server.alive())


# ---------------------------------------------------------------------------------------------
# 5. nofile 1,024 and 2,000 connections.

async def hold_connections(port, count, seconds, server):
    loop = asyncio.get_running_loop()
    socks, failed = [], [0]
    gate = asyncio.Semaphore(200)

    async def one():
        s = socket.socket()
        s.setblocking(False)
        async with gate:
            try:
                await asyncio.wait_for(loop.sock_connect(s, (HOST, port)), 3)
                socks.append(s)
                return
            except (OSError, asyncio.TimeoutError):
                failed[0] += 1
        s.close()

    await asyncio.gather(*(one() for _ in range(count)))
    alive_during = True
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        alive_during = alive_during and server.alive()
        await asyncio.sleep(0.5)
    for s in socks:
        s.close()
    return len(socks), failed[0], alive_during


def nofile_phase(server, label, count=MAX_CONNECTIONS - 10):
    connected, failed, alive_during = asyncio.run(hold_connections(server.port, count, 5.0, server))
    closed_at = time.monotonic()
    answered, result, failure = None, None, 'no try'
    while time.monotonic() - closed_at < PROBE_LIMIT:
        try:
            result = exchange(server.port, get(), close_wait=0,
                              answer_wait=max(0.2, PROBE_LIMIT - (time.monotonic() - closed_at)))
        except OSError as error:  # refused: nothing listens any more
            result = None
            failure = repr(error)
            if not server.alive():
                break
            time.sleep(0.2)
            continue
        failure = result.summary()
        if result.finals()[:1] == [200]:
            answered = time.monotonic() - closed_at
            break
        if not server.alive():
            break
        time.sleep(0.2)
    lines = server.log_mark()[0]
    why = ''
    if not server.alive():
        why = f', the process EXITED (code {server.proc.returncode})'
        errors = [line.strip() for line in server.log_tail(20000).splitlines() if 'due to error' in line]
        why += f': {errors[-1]}' if errors else ''
    check(f'{label}: server stays up under {count} connections', alive_during and server.alive(),
          f'{connected} connected, {failed} not{why}')
    check(f'{label}: GET / answered within {PROBE_LIMIT:.0f} s afterwards', answered is not None,
          f'after {answered:.1f} s' if answered is not None else failure)
    check(f'{label}: fewer than 2,000 log lines in all', lines < 2000, f'{lines} lines')
    tail = [line for line in server.log_tail(3000).splitlines() if 'Serving on' in line]
    if tail:
        say(f'     start-up line: {tail[-1].strip()}')


# ---------------------------------------------------------------------------------------------

def phase(name, function, *args):
    say(f'\n== {name}')
    started = time.monotonic()
    try:
        function(*args)
    except Exception as error:  # a dead server or a harness bug: report it as a failure, go on
        check(f'{name}: ran to the end', False, repr(error)[:300])
    say(f'   ({time.monotonic() - started:.0f} s)')


def with_server(repo, workdir, name, env=None, nofile=None):
    return Server(repo, name, env, nofile, workdir).start()


def stop_all():
    for proc in SERVERS:
        if proc.poll() is None:
            proc.kill()  # by PID: only servers this driver started
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


def watchdog():
    check(f'whole run within {RUN_LIMIT:.0f} s', False, 'watchdog fired')
    stop_all()
    failed = sum(1 for r in RESULTS if not r[1])
    say(f'{sum(1 for r in RESULTS if r[1])} passed, {failed} failed')
    os._exit(1)


PHASES = ('framing', 'smuggling', 'extras', 'timeout', 'flood', 'slowloris', 'slowbody', 'slowread', 'nofile')


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--repo', default=os.path.dirname(HERE), help='checkout to start (default: this one)')
    parser.add_argument('--only', default=','.join(PHASES), help='comma-separated phases: ' + ','.join(PHASES))
    args = parser.parse_args()
    repo, only = os.path.abspath(args.repo), set(args.only.split(','))
    unknown = only - set(PHASES)
    if unknown:
        parser.error(f'unknown phases {sorted(unknown)}')

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * MAX_CONNECTIONS + 200:  # our 2,000 sockets plus the server's, same machine
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    timer = threading.Timer(RUN_LIMIT, watchdog)
    timer.daemon = True
    timer.start()
    started = time.monotonic()
    timeout_seconds, timeout_env = socket_timeout(repo)
    say(f'Hostile-client check of {repo} (client open-files limit {soft}; socket_timeout {timeout_seconds:.0f} s'
        f'{" via SOCKET_TIMEOUT" if timeout_env else " from prod.conf"})')
    workdir = tempfile.mkdtemp(prefix='hostile-')
    try:
        # One server for the table, the smuggling and the extras; another, in parallel, for
        # the timeouts and then the log flood (its log counted on its own).
        if only & {'framing', 'smuggling', 'extras', 'timeout', 'flood'}:
            main_server = with_server(repo, workdir, 'main', timeout_env)
            side = with_server(repo, workdir, 'side', timeout_env)
            main_server.wait_ready()
            side.wait_ready()
            side_thread = None
            if 'timeout' in only:
                side_thread = threading.Thread(target=phase, daemon=True, args=(
                    '4. idle and stalled connections (in parallel, on a second server)', timeouts, side,
                    timeout_seconds))
                side_thread.start()
            if 'framing' in only:
                phase('1. framing table', framing, main_server)
            if 'smuggling' in only:
                phase('2. reused connections and smuggling', smuggling, main_server)
            if 'extras' in only:
                phase('7. pipelined flood and half-close',
                      lambda s: (pipelined_flood(s), pipelined_unparsable(s), half_close(s)),
                      main_server)
            if side_thread:
                side_thread.join(timeout_seconds + 20)
            if 'flood' in only:
                phase('6. log flood', log_flood, side)
            main_server.stop()
            side.stop()
        for kind, count, label in (('slowloris', 600, '3a. slowloris (600 connections, a header line every 5 s)'),
                                   ('slowbody', 600, '3b. slow bodies (600 POST /echo, 16 bytes every 5 s)'),
                                   ('slowread', 600, '3c. slow readers (600 x 4 pipelined 1 MiB files or pages, 1 byte a second)')):
            if kind in only:
                server = with_server(repo, workdir, kind, timeout_env).wait_ready()
                phase(label, slow_phase, server, kind, count, kind)
                server.stop()
        if 'nofile' in only:
            for name, limits in (('nofile-soft', (1024, hard)), ('nofile-hard', (1024, 1024))):
                server = with_server(repo, workdir, name, timeout_env, nofile=limits)
                server.wait_ready()
                phase(f'5. {name}: nofile {limits[0]}/{limits[1]}, {MAX_CONNECTIONS - 10} idle connections',
                      nofile_phase, server, name)
                server.stop()
    except Exception as error:
        check('harness ran to the end', False, repr(error)[:500])
    finally:
        stop_all()
        timer.cancel()
    failed = [r for r in RESULTS if not r[1]]
    if failed:
        where = f'server logs kept in {workdir}'
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        where = 'server logs removed'
    say(f'\nWhole run: {time.monotonic() - started:.0f} s; {where}')
    if failed:
        say('Failed:')
        for name, _, detail in failed:
            say(f'  - {name}' + (f': {detail}' if detail else ''))
    say(f'{len(RESULTS) - len(failed)} passed, {len(failed)} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
