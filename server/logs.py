"""Request ids and JSON logs (LOG_FORMAT=json). See docs/logging.md.

- Request ids (tools.request_id, on for the site and the admin pages): each request gets
  `cherrypy.request.request_id`, taken from X-Request-ID or, behind an AWS ALB, from
  X-Amzn-Trace-Id when it is well-formed, otherwise 32 random hex digits. The answer carries
  it back as X-Request-ID (errors included), and every error-log line of the request names it.
- LOG_FORMAT=json: every access line (stdout) and every error-log line (stderr: cherrypy.log(),
  tracebacks, engine messages) is one JSON object on one line; a traceback is one field.
  LOG_FORMAT=combined (the default) keeps the Apache combined access line as it was.

The access log itself (batching, probes left out) is production.AccessLog; it asks
access_line() here for a JSON line.
"""
import json
import logging
import os
import re
import sys
import time

import cherrypy
from cherrypy import _cperror

FORMATS = ('combined', 'json')
HEADER = 'X-Request-Id'  # title-cased, as CherryPy keeps header names (names are case-insensitive)
# What a client's or proxy's id may be: 1-128 characters, none of which needs escaping in a log
# line (no space, quote, backslash or control character). ';' and '=' fit an ALB trace id,
# "Root=1-67891233-abcdef012345678912345678;Sampled=1".
_ID = r'[A-Za-z0-9._:;=+/-]{1,128}'
VALID_ID = re.compile(_ID).fullmatch
_VALID_ID_BYTES = re.compile(_ID.encode('ascii')).fullmatch
_ID_FIELDS = (b'\nx-request-id:', b'\nx-amzn-trace-id:')  # lower-case, as RequestIdTool looks
HEAD_WINDOW = 65536  # id_of_head() looks this far into what arrived of a refused request

json_lines = False  # LOG_FORMAT=json; set by use_format()


def new_id():
    """32 hex digits from the OS's random source: unique without coordination (0.5 us)."""
    return os.urandom(16).hex()


class RequestIdTool(cherrypy.Tool):
    """tools.request_id: the id is set in _setup, which CherryPy runs once per request as
    the request reaches the app, before any hook: errors raised from the first hook on
    (404, 405, 500) still see it, and no hook is attached (cheaper)."""

    def __init__(self):
        super().__init__('on_start_resource', self._setup)

    def _setup(self):
        request = cherrypy.serving.request
        request.log_started = time.perf_counter()
        headers = request.headers
        # dict.get: CherryPy's own get() title-cases the name on every lookup.
        given = dict.get(headers, 'X-Request-Id')
        if given is None or not VALID_ID(given):
            given = dict.get(headers, 'X-Amzn-Trace-Id')
            if given is None or not VALID_ID(given):
                given = new_id()  # none, or not one we may log as it is: a fresh one
        request.request_id = given
        # Kept through error answers: CherryPy's HTTPError clears only body headers.
        dict.__setitem__(cherrypy.serving.response.headers, HEADER, given)


cherrypy.tools.request_id = RequestIdTool()


def id_of_head(head):
    """The id of a request the server refuses before CherryPy sees it (production.refuse),
    from `head`, what arrived of it: X-Request-ID, else X-Amzn-Trace-Id, if well-formed, as
    RequestIdTool takes them (the last of each, as cheroot keeps it); else a new id.

    Any bytes, a head cut short included: only whole lines of the head count, nothing after
    its empty line (a body) does, and it never raises. 1-2 us for a usual head.
    """
    try:
        head = bytes(head[:HEAD_WINDOW])
        ends = [at + 2 for at in (head.find(b'\r\n\r\n'),) if at >= 0]
        ends += [at + 1 for at in (head.find(b'\n\n'),) if at >= 0]
        if ends:
            head = head[:min(ends)]
        lower = head.lower()
        for name in _ID_FIELDS:
            start = lower.rfind(name)
            if start >= 0:
                stop = head.find(b'\n', start + len(name))
                if stop >= 0:
                    given = head[start + len(name):stop].strip()
                    if _VALID_ID_BYTES(given):
                        return given.decode('ascii')
    except Exception:  # not bytes at all: a refusal must still be answered
        pass
    return new_id()


# --- JSON lines ---

_string = json.encoder.encode_basestring_ascii  # C: a quoted, escaped JSON string, ASCII only
_stamp = (None, '')


def _now():
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""
    global _stamp
    now = time.time()
    second = int(now)
    stamp = _stamp
    if stamp[0] != second:
        stamp = _stamp = (second, time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second)))
    return '%s.%03dZ' % (stamp[1], (now - second) * 1000)


_ACCESS = ('{"time":"%s","level":"INFO","log":"access","method":%s,"path":%s,"status":%s,'
           '"bytes":%s,"duration_ms":%s,"client":%s,"user_agent":%s,"referer":%s,'
           '"request_id":%s}')


def access_line(request, response):
    """One access line as JSON, built with a template (2.5 us, not json.dumps' 6 us)."""
    headers = request.headers
    status = response.output_status
    length = dict.get(response.headers, 'Content-Length')
    started = getattr(request, 'log_started', None)  # None: the request failed before the tool
    agent = dict.get(headers, 'User-Agent')
    referer = dict.get(headers, 'Referer')
    request_id = getattr(request, 'request_id', None)
    path = request.script_name + request.path_info
    if request.query_string:
        path += '?' + request.query_string
    return _ACCESS % (
        _now(), _string(request.method or '-'), _string(path),
        int(status[:3]) if status else 'null',
        'null' if length is None else int(length),  # an int, or text a handler set
        '%.3f' % ((time.perf_counter() - started) * 1000) if started else 'null',
        _string(request.remote.name or request.remote.ip or '-'),
        'null' if agent is None else _string(agent),
        'null' if referer is None else _string(referer),
        'null' if request_id is None else _string(request_id))  # a handler may have set it


def error_line(msg, context, severity, exc_info):
    """One error-log line as JSON: the message, the request it belongs to, the traceback as
    one field. Errors are rare: json.dumps is fast enough here."""
    record = {'time': _now(), 'level': logging.getLevelName(severity), 'log': 'error',
              'context': context, 'message': msg}
    request = cherrypy.serving.request
    request_id = getattr(request, 'request_id', None)
    if request_id is not None:  # in a request (outside one, serving.request is a blank one)
        record.update(method=request.method, path=request.script_name + request.path_info,
                      client=request.remote.name or request.remote.ip, request_id=request_id)
    if exc_info and exc_info[0] is not None:
        record['traceback'] = _cperror.format_exc(exc_info).rstrip('\n')
        if not msg:  # CherryPy logs a handler's exception with no message: name it
            record['message'] = record['traceback'].rsplit('\n', 1)[-1]
    return json.dumps(record, separators=(',', ':'))  # compact, like the access lines


def error(log, msg='', context='', severity=logging.INFO, traceback=False):
    """CherryPy's LogManager.error, naming the request it was called in.

    Text: "[time] CONTEXT request_id=... msg", traceback lines after it as before.
    JSON: error_line(). Used by production.AccessLog and by the global cherrypy.log.
    """
    exc_info = _cperror._exc_info() if traceback else None
    if json_lines:
        log.error_log.log(severity, error_line(msg, context, severity, exc_info))
        return
    request_id = getattr(cherrypy.serving.request, 'request_id', None)
    if request_id is not None:
        context = '%s request_id=%s' % (context, request_id) if context else 'request_id=' + request_id
    log.error_log.log(severity, ' '.join((log.time(), context, msg)), exc_info=exc_info)


def use_format(name):
    """'combined' or 'json', for every log of the process (LOG_FORMAT is process-wide)."""
    global json_lines
    if name not in FORMATS:
        raise ValueError(f'log format must be one of {", ".join(FORMATS)}, not {name!r}')
    json_lines = name == 'json'
    # The global log: engine messages, and cherrypy.log.error() called directly.
    cherrypy.log.error = error.__get__(cherrypy.log)


def install(app, config):
    """Request ids for `app`, and the log format of prod.conf's ops.log_format [LOG_FORMAT]."""
    try:
        name = config['ops.log_format']
    except KeyError:  # a prod.conf from before the setting
        name = 'combined'
    try:
        use_format(name)
    except ValueError as problem:  # as settings.py does: one line, exit 2
        print(f'Bad setting: ops.log_format: {problem}', file=sys.stderr)
        raise SystemExit(2) from None
    # On unless prod.conf's [/] turns it off.
    app.config.setdefault('/', {}).setdefault('tools.request_id.on', True)
