"""Strict HTTP/1.1 request syntax and framing (RFC 9112), as pure functions on bytes.

The server (production.IdleConnections) collects a request's bytes before any worker sees
them. It asks this module two questions:

- framing(head): how is the body delimited? (no body, Content-Length, chunked, or
  "invalid": then the worker gets the head alone and answers 400/501, and the
  connection closes);
- chunked_scan(...): where does a chunked body end (strictly: no '0x5', '-1', '0_5',
  bare LF, chunk data without its CRLF, sizes of 2**64 or more)?

and, in the worker, check_head(head) says whether the head is one cheroot may parse:
no obs-fold or whitespace-led line, no space before a colon, no control character in a
value or the target, one Host (exactly one in HTTP/1.1) of RFC 3986 syntax, at most one Content-Length of
digits only, not with Transfer-Encoding, Transfer-Encoding only in HTTP/1.1 and ending
in chunked.

Nothing here reads a socket, so each case is a one-line unit test (server/tests/test_http.py).
"""
import ipaddress
import re


class Reject(Exception):
    """A request answered with `status` and closed; `reason` is said in the body and the log."""

    def __init__(self, status, reason):
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Field values: visible ASCII, space, tab and obs-text; no NUL, CR, LF or other controls.
_VALUE = rb'[\t\x20-\x7e\x80-\xff]*'
_REQUEST_LINE = rb'(' + _TOKEN + rb') [\x21-\x7e\x80-\xff]+ HTTP/([0-9])\.([0-9])\r\n'
_FIELD = _TOKEN + rb':' + _VALUE + rb'\r\n'
_HEAD = re.compile(_REQUEST_LINE + rb'(?:' + _FIELD + rb')*\r\n')
_FIELD_LINE = re.compile(_FIELD)
# Host (RFC 9110 7.2): uri-host [":" port] of RFC 3986, or empty. uri-host is an IP-literal
# ("[v6]" or "[vF.future]"), or a reg-name (which IPv4 addresses match too); port is digits.
_HOST = re.compile(rb"(?:\[(?:[0-9a-f:.]+|v[0-9a-f]+\.[a-z0-9\-._~!$&'()*+,;=:]+)\]"
                   rb"|(?:[a-z0-9\-._~!$&'()*+,;=]|%[0-9a-f]{2})*)(?::[0-9]*)?")

_CHUNK_EXT = rb'(?:[ \t]*;[ \t]*' + _TOKEN + rb'(?:[ \t]*=[ \t]*(?:' + _TOKEN + \
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
_CHUNK_LINE = re.compile(rb'([0-9A-Fa-f]{1,16})(' + _CHUNK_EXT + rb')\r')
_CHUNK_SIZE_TOO_BIG = re.compile(rb'[0-9A-Fa-f]{17,}')
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions, and each trailer line
MAX_TRAILERS = 65536  # all trailer lines together, when the server has no header cap

NONE, LENGTH, CHUNKED, INVALID = 'none', 'length', 'chunked', 'invalid'


def head_end(buffer, max_size):
    """Where the head in `buffer` ends (just after CRLF CRLF), or None while it is
    incomplete. Reject 431 (414 for the request line alone) beyond max_size bytes."""
    window = max_size + 4
    end = buffer.find(b'\r\n\r\n', 0, window)
    end = end + 4 if end >= 0 else None
    # A head with bare-LF lines ends at its first empty line too: check_head() rejects it.
    for terminator in (b'\n\n', b'\n\r\n'):
        bare = buffer.find(terminator, 0, window if end is None else end - 1)
        if bare >= 0:
            end = bare + len(terminator)
    if end is not None and end <= max_size:
        return end
    if end is not None or len(buffer) > max_size:
        if buffer.find(b'\n', 0, max_size) < 0:
            raise Reject('414 Request-URI Too Long',
                         'The Request-URI sent with the request exceeds the maximum allowed bytes.')
        raise Reject('431 Request Header Fields Too Large',
                     'The headers sent with the request exceed the maximum allowed bytes.')
    return None


def _fields(lower, name):
    """The values of every `name:` field of a lower-cased head, OWS stripped."""
    values = []
    start = 0
    key = b'\r\n' + name + b':'
    while True:
        at = lower.find(key, start)
        if at < 0:
            return values
        start = lower.find(b'\r\n', at + 2)
        if start < 0:  # a last line ended by a bare LF: check_head() rejects the head
            start = len(lower)
        values.append(lower[at + len(key):start].strip(b' \t'))


def framing(head):
    """(kind, length) of the body that follows `head`: (NONE, 0), (LENGTH, n),
    (CHUNKED, None), or (INVALID, None) when check_head() will reject the request."""
    lower = head.lower()
    lengths = _fields(lower, b'content-length')
    codings = _fields(lower, b'transfer-encoding')
    if codings:
        if lengths or codings != [b'chunked'] or not lower[:lower.find(b'\r\n')].endswith(
                b' http/1.1'):
            return INVALID, None
        return CHUNKED, None
    if not lengths:
        return NONE, 0
    if len(lengths) > 1 or not lengths[0].isdigit():
        return INVALID, None
    digits = lengths[0].lstrip(b'0')
    # int() refuses more than 4,300 digits (ValueError); past 18, no cap lets it through.
    return LENGTH, int(digits or b'0') if len(digits) <= 18 else 10**18


def expects_continue(head):
    """Whether the client waits for "100 Continue" before it sends the body."""
    return b'100-continue' in _fields(head.lower(), b'expect')


def check_head(head, require_host=True):
    """None if `head` (request line to the empty line, CRLFs included) is one a strict
    server accepts; else Reject's (status, reason). require_host: HTTP/1.1 needs a Host."""
    match = _HEAD.fullmatch(head)
    if match is None:
        return '400 Bad Request', _explain(head)
    lower = head.lower()
    version = (int(match[2]), int(match[3]))
    hosts = _fields(lower, b'host')
    if len(hosts) > 1:
        return '400 Bad Request', 'More than one Host header.'
    if not hosts and version >= (1, 1) and require_host:
        return '400 Bad Request', 'HTTP/1.1 requires a Host header.'
    if hosts and not _host_ok(hosts[0]):  # a space, a bad port...: proxies disagree
        return '400 Bad Request', 'Malformed Host header.'
    lengths = _fields(lower, b'content-length')
    if len(lengths) > 1:
        return '400 Bad Request', 'More than one Content-Length.'
    if lengths and not lengths[0].isdigit():
        return '400 Bad Request', 'Malformed Content-Length.'
    codings = _fields(lower, b'transfer-encoding')
    if codings:
        if version < (1, 1):
            return '400 Bad Request', 'Transfer-Encoding in an HTTP/1.0 request.'
        if lengths:
            return '400 Bad Request', 'Both Content-Length and Transfer-Encoding.'
        names = [name.strip(b' \t') for value in codings for name in value.split(b',')]
        if any(name not in (b'chunked', b'gzip', b'deflate', b'compress', b'identity')
               for name in names):
            return '501 Not Implemented', 'Unknown transfer coding.'
        if names != [b'chunked']:
            if names[-1:] == [b'chunked'] and b'chunked' not in names[:-1]:
                return '501 Not Implemented', 'Only the chunked transfer coding is implemented.'
            return '400 Bad Request', 'Transfer-Encoding must end with chunked, once.'
    return None


def _host_ok(value):
    """Whether a Host value is uri-host [":" port] (RFC 3986), or an IPv6 address without
    its brackets, [":" port] after it: what cheroot's own test client (and some others)
    send, unambiguous once the address parses (and rare enough that stock servers take it)."""
    if _HOST.fullmatch(value):
        return True
    if value.count(b':') < 2 or not value.isascii():
        return False
    address, _, port = value.rpartition(b':')
    for candidate in (value, address if port.isdigit() else None):
        try:
            ipaddress.IPv6Address(candidate.decode('ascii'))
            return True
        except (AttributeError, ValueError):
            continue
    return False


def _explain(head):
    """Why _HEAD did not match (the error path only)."""
    lines = head[:-4].split(b'\r\n') if head.endswith(b'\r\n\r\n') else head.split(b'\r\n')
    request_line = lines[0]
    if not re.fullmatch(_REQUEST_LINE[:-4], request_line):
        if re.search(rb'[\x00-\x1f\x7f]', request_line):
            return 'Control character in the request line.'
        return 'Malformed Request-Line.'
    for line in lines[1:]:
        if b'\n' in line:
            return 'HTTP requires CRLF terminators.'
        if line[:1] in (b' ', b'\t'):
            return 'Whitespace-led line (obs-fold) in the headers.'
        name, colon, value = line.partition(b':')
        if not colon:
            return 'Illegal header line.'
        if name.rstrip(b' \t') != name and re.fullmatch(_TOKEN, name.rstrip(b' \t')):
            return 'Whitespace between a header name and its colon.'
        if not re.fullmatch(_TOKEN, name):
            return 'Malformed header name.'
        if not re.fullmatch(_VALUE, value):
            return 'Control character in a header value.'
    return 'Malformed request head.'


def chunked_scan(buffer, pos, total, limit, trailers=None, trailer_limit=MAX_TRAILERS):
    """Scan a chunked body in buffer from pos: the start of a chunk-size line or, once the
    last chunk is read, of a trailer line (`trailers`: where the trailer section starts);
    `total` data bytes seen before it. Returns (True, end, total, None) when the body and its
    trailers end at `end`, else (False, pos, total, trailers): the arguments to resume with
    when more has arrived, so that each line is parsed once. Rejects malformed framing with
    400, a body over `limit` (0: no limit) with 413, trailers over `trailer_limit` with 431."""
    if trailers is not None:
        return _trailers(buffer, pos, total, trailers, trailer_limit)
    while True:
        newline = buffer.find(b'\n', pos, pos + MAX_CHUNK_LINE)
        if newline < 0:
            if len(buffer) - pos >= MAX_CHUNK_LINE:
                raise Reject('400 Bad Request', 'Chunk-size line too long.')
            return False, pos, total, None
        match = _CHUNK_LINE.fullmatch(buffer, pos, newline)
        if match is None:
            if buffer[newline - 1:newline] != b'\r':
                raise Reject('400 Bad Request', 'Bare LF in a chunk-size line.')
            if _CHUNK_SIZE_TOO_BIG.match(buffer, pos):
                raise Reject('400 Bad Request', 'Chunk size of 2**64 or more.')
            raise Reject('400 Bad Request', 'Malformed chunk-size line.')
        size = int(match[1], 16)
        if limit and total + size > limit:
            raise Reject('413 Request Entity Too Large',
                         'The entity sent with the request exceeds the maximum allowed bytes.')
        data = newline + 1
        if size == 0:
            return _trailers(buffer, data, total, data, trailer_limit)
        if len(buffer) < data + size + 2:
            return False, pos, total, None
        if buffer[data + size:data + size + 2] != b'\r\n':
            raise Reject('400 Bad Request', 'Chunk data not followed by CRLF.')
        pos, total = data + size + 2, total + size


def _trailers(buffer, pos, total, start, limit):
    """After the last chunk: trailer fields, each checked like a header, then CRLF. They
    count against `limit` (the header cap): 1 MiB of trailers, all parsed again as each
    few bytes came, kept a core busy."""
    while True:
        newline = buffer.find(b'\n', pos, pos + MAX_CHUNK_LINE)
        if newline < 0:
            if len(buffer) - pos >= MAX_CHUNK_LINE:
                raise Reject('400 Bad Request', 'Trailer line too long.')
            if limit and len(buffer) - start > limit + 2:
                raise _trailers_too_large()
            return False, pos, total, start
        if buffer[newline - 1:newline] != b'\r':
            raise Reject('400 Bad Request', 'Bare LF in the trailers.')
        if newline - 1 == pos:
            return True, newline + 1, total, None
        if limit and newline + 1 - start > limit:
            raise _trailers_too_large()
        if not _FIELD_LINE.fullmatch(buffer, pos, newline + 1):
            raise Reject('400 Bad Request', 'Malformed trailer field.')
        pos = newline + 1


def _trailers_too_large():
    return Reject('431 Request Header Fields Too Large',
                  'The trailer fields sent with the request exceed the maximum allowed bytes.')
