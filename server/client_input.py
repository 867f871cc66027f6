"""What clients send that CherryPy's parsers fail on: ignored where HTTP lets a server ignore
it, else 400. Never a 500, never a traceback in the log (the table: docs/server-hardening.md).

Stock CherryPy 18.10 answered each case below 500 and logged a traceback, unless said
otherwise. Valid requests are served exactly as before.

- Accept-Encoding / Accept-Charset elements whose qvalue is not a number (`gzip;q=x`): the
  element is ignored (RFC 9110 12.5.3: a server may disregard these preferences; nginx takes
  `gzip;q=x` as "no gzip"). The gzip tool failed on them on every page, error pages too;
  the encode tool answered 400 for Accept-Charset. The other elements still count:
  `gzip;q=x` alone is answered uncompressed, `gzip, br;q=x` compressed.
- A 206 (one range of a file) is sent uncompressed: the gzip tool compressed it, so that its
  Content-Range no longer described its body, and a resumed download came out corrupt.
- An Accept-Encoding that names none of gzip, x-gzip or identity (`br` alone, as a CDN may
  normalize it to, `zstd`, `*`): `identity` is added to it, as RFC 9110 12.5.3 says it is
  acceptable unless excluded, and the page is answered uncompressed. Stock's gzip tool
  answered 406 Not Acceptable on every text page. `identity;q=0` or `*;q=0` still get 406.
- A Range header that is not a valid byte-range set (`bytes=abc`, `bytes=1-a`, `bytes=,`),
  names another unit (`lines=1-2`, served as bytes; RFC 9110 14.2: MUST be ignored), asks
  for more than MAX_RANGES ranges, or for several that may overlap (`bytes=0-,0-`: the file
  again and again in one answer; an open-ended or suffix range among several counts):
  ignored, so a file is answered 200 whole (RFC 9110 14.2: a server MAY ignore Range).
  An unsatisfiable `-0` is left out (CherryPy sent a 206 with `Content-Range: bytes
  275-274/275`); positions past 18 digits are capped (int() refuses over 4,300). Valid
  ranges are still 206, unsatisfiable ones 416.
- A body the parsers fail on (an unknown or non-text `charset` on a form, a multipart body
  without a usable boundary, cut short or with a bad part header, JSON nested beyond the
  recursion limit for tools.json_in): 400 "Malformed request body.". The body is parsed by
  this tool's hook, last of the before_request_body hooks, instead of right after them by
  CherryPy: the same parse at the same point, its errors mapped.
- A charset name the standard library does not know (in Accept-Charset, or a form's
  Content-Type) is looked up no further than its list of codecs and aliases: its codec
  search kept every name asked for, found or not, so a client's made-up names filled memory
  (stock too). guard_codec_lookups(), called once by install().
- A parameter named `self` (`/?self=1`, or in a form body): dropped. A handler method cannot
  take it (the call failed with "got multiple values for argument 'self'"): the landing page
  and /healthcheck answered ?self=1 with 500.
- A header value CherryPy cannot decode as RFC 2047 (`=?zip?q?x?=`, or text before an encoded
  word, as in `Referer: https://a/?u=?x?q?y?=`): the handler gets it as sent, as from any
  other server. CherryPy decodes every header with "=?" in it before any tool runs, and
  failed there before the app's config applied: the 500 page carried the traceback and
  CherryPy's version, and nothing was logged. So this part is WSGI middleware in the app's
  pipeline (readable_headers), as is the next.
- A cookie name outside RFC 6265's token (`a/b=1`, which a script on the site may set) or an
  unknown `$` attribute: that cookie is left out, the others kept. CherryPy answered 400 with
  its default error page, version included, and lost every cookie.

production.configure_app() turns it on for the site and the admin pages (`tools.client_input`).
"""
import base64
import codecs
import encodings
import encodings.aliases
import errno
import pkgutil
import re
from http.cookies import SimpleCookie

import cherrypy
from cherrypy.lib import httputil

MAX_RANGES = 200  # more ranges in one Range header: ignored (Apache's MaxRanges default)
_DIGITS = 18  # a byte position longer than this is past any file (10**18 bytes is an exabyte)

# Headers whose elements CherryPy's own tools parse with their qvalues on every request:
# Accept-Encoding (tools.gzip) and Accept-Charset (tools.encode). As CherryPy stores them.
NEGOTIATED = ('Accept-Encoding', 'Accept-Charset')
# A q parameter (any case, spaces or tabs around it, as CherryPy's parsers take it) not
# followed by a plain number: the header needs the slow check.
_ODD_Q = re.compile(r';[ \t]*q[ \t]*=(?![ \t]*[0-9]+(?:\.[0-9]*)?[ \t]*(?:[,;]|$))', re.I)
# Where CherryPy's cookie parser (http.cookies) may read a cookie name it refuses (CookieError:
# a character outside RFC 6265's token, or a "$" attribute it does not know): at the start, or
# after a ";" or a space. Two patterns: one alternation at every character cost twice the time.
_ODD_NAME = r'(?:[=$]|[^;=\s]*[<>@,/(){}?][^;=\s]*=)'
_ODD_FIRST_COOKIE = re.compile(_ODD_NAME).match
_ODD_NEXT_COOKIE = re.compile(r'[;\s]' + _ODD_NAME).search
# The codings the gzip tool weighs: gzip, x-gzip, identity. Listing none of them (`br` alone,
# as a CDN may normalize the header to), it answered 406; it does not read "*" either.
_GZIP_OR_IDENTITY = re.compile(r'gzip|identity', re.I).search
_ALL_EXCLUDED = re.compile(r'\*[ \t]*;[ \t]*q[ \t]*=[ \t]*0(?:\.0*)?[ \t]*(?:,|$)', re.I).search
_RANGE = re.compile(r'[ \t]*(?:([0-9]+)[ \t]*-[ \t]*([0-9]*)|-[ \t]*([0-9]+))[ \t]*')


def usable_qvalues(value):
    """`value` (an Accept-Encoding or Accept-Charset header) without the elements whose qvalue
    CherryPy cannot read; the value itself when all are readable (the usual case, one regex)."""
    if not _ODD_Q.search(value) and '"' not in value:
        return value
    kept = []
    for element in httputil.RE_HEADER_SPLIT.split(value):  # CherryPy's own split and parse
        try:
            httputil.AcceptElement.from_str(element).qvalue
        except Exception:  # HTTPError(400) from .qvalue, or anything else: ignore it
            continue
        kept.append(element)
    return ','.join(kept)


def _position(digits):
    """A byte position as CherryPy can take it: no leading zeros, at most _DIGITS digits."""
    digits = digits.lstrip('0') or '0'
    return digits if len(digits) <= _DIGITS else '9' * _DIGITS


def usable_range(value):
    """The Range header rewritten as CherryPy parses it safely, or None to ignore it.

    RFC 9110 14.1: "bytes=" then a list of first-last, first- or -suffix. The result has the
    same ranges, in the same order, without spaces or empty list elements."""
    unit, equals, ranges = value.partition('=')
    if not equals or unit.strip().lower() != 'bytes':
        return None
    kept = []
    for spec in ranges.split(','):
        if not spec.strip():
            continue  # empty list elements are allowed (RFC 9110 5.6.1)
        match = _RANGE.fullmatch(spec)
        if match is None:
            return None
        first, last, suffix = match.groups()
        if suffix is not None:
            suffix = _position(suffix)
            if suffix != '0':  # "the last 0 bytes" is unsatisfiable: left out
                kept.append('-' + suffix)
            continue
        first = _position(first)
        if last:
            last = _position(last)
            if (len(last), last) < (len(first), first):
                return None  # last before first: an invalid range-spec
            if len(last) == _DIGITS and set(last) == {'9'}:
                last = ''  # to the end (CherryPy clamps it so anyway)
        kept.append(f'{first}-{last}')
    if not kept or len(kept) > MAX_RANGES or len(kept) > 1 and _overlap(kept):
        return None
    return 'bytes=' + ','.join(kept)


def _overlap(ranges):
    """Whether ranges may overlap: `bytes=0-,0-,...` asked for the file 200 times in one answer
    (RFC 9110 14.2 lets a server ignore such a Range). A suffix or open-ended range among
    several counts as overlapping: where it starts depends on the file's size."""
    spans = []
    for spec in ranges:
        first, _, last = spec.partition('-')
        if not first or not last:
            return True
        spans.append((int(first), int(last)))
    spans.sort()
    return any(start <= previous_end for (_, previous_end), (start, _) in zip(spans, spans[1:]))


# Errors of the server, not of the client's bytes, while a body is parsed (temp files).
_SERVER_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EROFS, errno.EIO}


def _read_body():
    """before_request_body, after the other hooks: parse the body as CherryPy would right
    after them, a parser's failure on the client's bytes a 400; drop a `self` parameter."""
    request = cherrypy.serving.request
    if request.process_request_body:
        request.process_request_body = False  # parsed here: CherryPy must not parse it again
        try:
            request.body.process()
        except (cherrypy.HTTPError, cherrypy.HTTPRedirect, cherrypy.InternalRedirect):
            raise  # CherryPy's own answers: 411, 413, 415, "Invalid JSON document"...
        except MemoryError:
            raise
        except OSError as error:
            if error.errno in _SERVER_FAULTS:  # a full disk for an upload's temp file: a 500
                raise
            raise cherrypy.HTTPError(400, 'Malformed request body.') from None
        except (ValueError, LookupError, EOFError, RecursionError):  # parsers, on bad bytes
            raise cherrypy.HTTPError(400, 'Malformed request body.') from None
        except Exception:  # more likely a bug (a body processor of yours): logged
            cherrypy.log('A request body failed to parse: 400', traceback=True)
            raise cherrypy.HTTPError(400, 'Malformed request body.') from None
    request.params.pop('self', None)


def _ranges_uncompressed():
    """Before the gzip tool (priority 80): a 206 goes out uncompressed. Its Content-Range
    counts the file's bytes; gzipped, the body was other bytes, and a resumed download of a
    text file came out corrupt (stock CherryPy too)."""
    if str(cherrypy.serving.response.status).startswith('206'):
        dict.pop(cherrypy.serving.request.headers, 'Accept-Encoding', None)


class ClientInputTool(cherrypy.Tool):
    """tools.client_input. The header checks run in _setup, which CherryPy calls once per
    request before any hook (as logs.RequestIdTool does); the body hook is attached only to
    requests that may have a body or a query string."""

    def __init__(self):
        super().__init__('before_request_body', _read_body, priority=100)

    def _setup(self):
        request = cherrypy.serving.request
        headers = request.headers
        for name in NEGOTIATED:
            value = dict.get(headers, name)  # dict.get: CherryPy's get() title-cases each time
            if value is not None and '=' in value:
                usable = usable_qvalues(value)
                if usable != value:
                    if usable.strip(' \t,'):
                        dict.__setitem__(headers, name, usable)
                    else:
                        dict.__delitem__(headers, name)
        value = dict.get(headers, 'Accept-Encoding')
        if (value is not None and value.strip() and not _GZIP_OR_IDENTITY(value)
                and not _ALL_EXCLUDED(value)):
            dict.__setitem__(headers, 'Accept-Encoding', value + ', identity')
        value = dict.get(headers, 'Range')
        if value is not None:
            usable = usable_range(value)
            if usable is None:
                dict.__delitem__(headers, 'Range')
            else:
                if usable != value:
                    dict.__setitem__(headers, 'Range', usable)
                request.hooks.attach('before_finalize', _ranges_uncompressed, priority=70)
        if request.query_string or request.method in request.methods_with_bodies:
            request.hooks.attach('before_request_body', _read_body, priority=100)


cherrypy.tools.client_input = ClientInputTool()


# Every name the standard library's codec search can resolve: its modules and their aliases.
_CODEC_NAMES = frozenset({*encodings.aliases.aliases, *encodings.aliases.aliases.values(),
                          *(module.name for module in pkgutil.iter_modules(encodings.__path__))})


def _known_codecs_only(name):
    """The standard library's codec search, asked only for a name it may know. It keeps
    every name it is asked for, found or not, for good: each charset a client named in
    Accept-Charset or a form's Content-Type stayed in memory (1,500 names a request, 220 KB
    each time, until the pod's memory limit). codecs.lookup() keeps the names it finds."""
    normal = encodings.normalize_encoding(name)
    if normal in _CODEC_NAMES or normal.replace('.', '_') in _CODEC_NAMES:
        return encodings.search_function(name)
    return None


def guard_codec_lookups():
    """Ask the standard library's codec search through _known_codecs_only (public codecs
    API: unregister, register; other search functions stay as they are)."""
    codecs.unregister(encodings.search_function)
    codecs.unregister(_known_codecs_only)  # once, however often it is called
    codecs.register(_known_codecs_only)


def _as_encoded_word(value):
    """An RFC 2047 encoded word that CherryPy decodes back to `value` exactly."""
    return '=?utf-8?b?%s?=' % base64.b64encode(value.encode('utf-8')).decode('ascii')


def _cherrypy_takes(cookie):
    """Whether CherryPy reads this Cookie header without an error (it answered 400, with its
    own error page and version, for a cookie name such as "a/b", and 500 for a bad "=?")."""
    try:
        httputil.decode_TEXT_maybe(cookie)
        SimpleCookie().load(cookie)
    except Exception:
        return False
    return True


def usable_cookie(value):
    """The Cookie header without the cookies CherryPy fails on, and without "$" attributes
    (RFC 2965's, obsolete) once one fails; the value itself in the usual case (one regex:
    CherryPy's own parse, done twice, would cost 14 us a request). Each cookie is checked
    alone: the time stays linear in the header's length."""
    if '=?' not in value and not _ODD_FIRST_COOKIE(value) and not _ODD_NEXT_COOKIE(value):
        return value
    if _cherrypy_takes(value):
        return value
    pairs = (pair.strip() for pair in value.split(';'))
    return '; '.join(pair for pair in pairs
                     if pair and pair[0] != '$' and _cherrypy_takes(pair))


def readable_headers(nextapp):
    """WSGI middleware (the app's pipeline), before CherryPy reads the headers: a header that
    CherryPy's RFC 2047 decoding fails on reaches it as an encoded word of its own raw value,
    which CherryPy decodes to that value; the cookies of a Cookie header that CherryPy would
    fail on are left out (usable_cookie). Headers without "=?" cost one `in` each."""

    def wsgi(environ, start_response):
        odd = [key for key, value in environ.items() if key[:5] == 'HTTP_' and '=?' in value]
        if '=?' in environ.get('CONTENT_TYPE', ''):
            odd.append('CONTENT_TYPE')
        for key in odd:
            value = environ[key].strip()
            try:
                httputil.decode_TEXT_maybe(value)
            except Exception:
                if key != 'HTTP_COOKIE':  # (cookies: below)
                    environ[key] = _as_encoded_word(value)
        cookie = environ.get('HTTP_COOKIE')
        if cookie is not None:
            usable = usable_cookie(cookie)
            if usable != cookie:
                if _cherrypy_takes(usable) and usable:
                    environ['HTTP_COOKIE'] = usable
                else:
                    del environ['HTTP_COOKIE']
        return nextapp(environ, start_response)
    return wsgi


def install(app):
    """Turn the tool on for `app` (unless its config turns it off) and put the middleware in
    its WSGI pipeline."""
    app.config.setdefault('/', {}).setdefault('tools.client_input.on', True)
    guard_codec_lookups()
    pipeline = app.wsgiapp.pipeline
    if all(name != 'client_input' for name, _ in pipeline):
        pipeline.append(('client_input', readable_headers))
