"""Settings, twelve-factor style: CherryPy's defaults < prod.conf < environment variables.

Every value is checked before anything binds, from prod.conf and from the environment alike.
A bad one prints one line that names it and says what is wrong, then exits with status 2, e.g.

    PORT='abc': must be a whole number from 1 to 65535

Your own setting: put it in prod.conf's [global] as `ops.name: default`; the environment
variable NAME overrides it (read as the default's type: text, whole number, number,
True/False; text for None; comma-separated text for a list), and a handler reads it with
`settings.get('ops.name')`.
"""
import difflib
import inspect
import os
import socket
import sys

import cherrypy
from cherrypy.lib import reprconf

# Our own settings live in prod.conf under "ops."; tell CherryPy the namespace is known.
cherrypy.config.namespaces['ops'] = lambda key, value: None


class SettingError(ValueError):
    """A setting that cannot be used; its message is the one line the user sees."""


def _number(low, high):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise SettingError(f'must be a whole number from {low} to {high}')
        return value
    return parse


def _switch(text):
    value = text.strip().lower()
    if value in ('1', 'true', 'yes', 'on'):
        return True
    if value in ('0', 'false', 'no', 'off', ''):
        return False
    raise SettingError('must be 1/0, true/false, yes/no or on/off')


def _one_of(*choices):
    def parse(text):
        if text.strip().lower() not in choices:
            raise SettingError('must be ' + ' or '.join(choices))
        return text.strip().lower()
    return parse


def _host(text):
    if not text.strip() or any(c.isspace() for c in text):
        raise SettingError('must be an address or host name such as 0.0.0.0 or 127.0.0.1')
    try:
        socket.getaddrinfo(text.strip(), None)
    except (OSError, UnicodeError):  # not an address, and no such name (999.1.1.1, abc)
        raise SettingError('not an address, nor a host name this machine resolves') from None
    return text.strip()


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 3600:
        raise SettingError('must be a number of seconds above 0, at most 3600')
    return value


def _list(text):
    """A list setting of your own from its variable: comma-separated text."""
    return [item.strip() for item in text.split(',') if item.strip()]


def _whole_number(text):
    try:
        return int(text)
    except ValueError:
        raise SettingError('must be a whole number') from None


def _decimal(text):
    try:
        return float(text)
    except ValueError:
        raise SettingError('must be a number') from None


def _development(on):
    # CherryPy's own defaults are its development mode: autoreload, tracebacks in responses.
    return {'environment': None, 'engine.autoreload.on': True, 'checker.on': True,
            'request.show_tracebacks': True, 'request.show_mismatched_params': True} if on else {}


# variable: (where it goes in the config, how to read it)
VARIABLES = {
    'HOST': ('server.socket_host', _host),
    'PORT': ('server.socket_port', _number(1, 65535)),
    'THREAD_POOL': ('server.thread_pool', _number(1, 1000)),
    'SHUTDOWN_TIMEOUT': ('server.shutdown_timeout', _number(0, 3600)),
    'KEEP_ALIVE_TIMEOUT': ('ops.keep_alive_timeout', _number(1, 3600)),
    'KEEP_ALIVE_LIMIT': ('ops.keep_alive_limit', _number(0, 100000)),
    'LOG_HEALTH_CHECKS': ('ops.log_health_checks', _switch),
    'LOG_FORMAT': ('ops.log_format', _one_of('combined', 'json')),
    'ADMIN_PORT': ('ops.admin_port', _number(0, 65535)),
    'DRAIN_SECONDS': ('ops.drain_seconds', _number(0, 3600)),
    'TRUST_PROXY': ('ops.trust_proxy', _switch),
    'WORKERS': ('ops.workers', _number(1, 64)),
    'STATIC_MAX_AGE': ('ops.static_max_age', _number(0, 31536000)),  # every static section
    'DEV': (None, _switch),
}
# How a setting of your own (ops.* in prod.conf) reads its variable: by the default's type
# (None: text; a list: comma-separated text).
PARSE_BY_TYPE = {bool: _switch, int: _whole_number, float: _decimal, str: str,
                 type(None): str, list: _list}
# prod.conf values with no variable, checked all the same: a bad one failed every request.
FILE_ONLY = {
    'server.socket_timeout': _seconds,
    'server.socket_queue_size': _number(1, 65535),
    'server.max_request_header_size': _number(0, 2**31),
    'server.max_request_body_size': _number(0, 2**62),
}


# Global keys that configure the process, not a request: CherryPy applies them to its
# server, engine, log and checker when the config is loaded ("ops" is ours).
PROCESS_WIDE = ('server', 'engine', 'log', 'checker', 'tree', 'ops', 'environment')


class Settings:
    """The resolved settings: the global config after overrides, plus the app's config."""

    def __init__(self, app_config, dev, process_wide):
        self.app_config = app_config
        self.dev = dev
        self.process_wide = process_wide

    def __getitem__(self, key):
        return self.process_wide[key] if key in self.process_wide else cherrypy.config[key]

    def summary(self):
        host, port = self['server.socket_host'], self['server.socket_port']
        admin = self.admin_port() or 'off'
        workers = self['ops.workers'] if f'{__package__}.workers' in sys.modules else 1
        each = f' in each of {workers} processes' if workers > 1 else ''
        from . import production  # imported here: production needs no settings at import
        files = production.startup_note()  # "open files: N (raised from M)"
        return (f'Serving on http://{host}:{port} with {self["server.thread_pool"]} threads{each} '
                f'(environment: {"development" if self.dev else "production"}, admin port: {admin}'
                f'{", " + files if files else ""})')


    def admin_port(self):
        """The admin listener's port; 0 if it is off, or gone with probes.py (README)."""
        return self['ops.admin_port'] if f'{__package__}.probes' in sys.modules else 0


def get(key):
    """A setting's value as the server runs with it: settings.get('ops.greeting')."""
    if _current is None:
        raise LookupError('settings.get() before settings.load(): call it from a handler')
    return _current[key]


_current = None  # the Settings of the last load()


# Variables a setting of your own cannot take: the server's, run.sh's, and the system's.
TAKEN = {*VARIABLES, 'HOST_PORT', 'HOST_BIND', 'IMAGE', 'CONTAINER', 'ENGINE', 'PYTHON_IMAGE',
         'HOME', 'PATH', 'USER', 'LOGNAME', 'SHELL', 'PWD', 'LANG', 'TERM', 'TZ', 'TMPDIR',
         'HOSTNAME'}


def user_variables(global_config, file_name='prod.conf'):
    """{VARIABLE: (key, parse)} for your own ops.* settings in prod.conf."""
    known = {key for key, _ in VARIABLES.values()}
    mine = {key[len('ops.'):].upper(): (key, PARSE_BY_TYPE[type(value)])
            for key, value in global_config.items()
            if key.startswith('ops.') and key not in known and type(value) in PARSE_BY_TYPE}
    for name, (key, _) in mine.items():
        if name in TAKEN:
            raise SettingError(f'{file_name}: {key}: its variable {name} is taken (the server\'s, '
                               'run.sh\'s or the system\'s): give the setting another name')
    return mine


def check_file_values(global_config, file_name):
    """prod.conf's values go through the checks of their variables; returns them parsed."""
    checked = {}
    checks = [(key, parse, f' [{name}]') for name, (key, parse) in VARIABLES.items()]
    checks += [(key, parse, '') for key, parse in FILE_ONLY.items()]
    for key, parse, variable in checks:
        if key in global_config:
            value = global_config[key]
            try:
                if not isinstance(value, (str, int, float)):  # `abc` reads as a module
                    raise SettingError('must be a value, not a name')
                checked[key] = parse(str(value))
            except SettingError as error:
                shown = getattr(value, '__name__', None) or repr(value)
                raise SettingError(f'{file_name}: {key}: {shown}: {error}{variable}') from None
    return checked


def check_file_keys(file_config, file_name):
    """A misspelled key in prod.conf did nothing (a server key, a tool's argument) or broke
    the server later (a key the template reads: a traceback at start, every /static/ a 500)."""
    global_config = file_config.get('global', {})
    for key in global_config:
        if key.startswith('server.') and not hasattr(cherrypy.server, key[len('server.'):]):
            known = ['server.' + name for name in vars(type(cherrypy.server))
                     if not name.startswith('_')] + [key for key, _ in VARIABLES.values() if key]
            raise SettingError(f'{file_name}: {key}: not a setting of CherryPy\'s server'
                               + _did_you_mean(key, known))
    for key in (key for key, _ in VARIABLES.values() if key and key.startswith('ops.')):
        if key not in global_config:
            raise SettingError(f'{file_name}: {key} is missing' + _did_you_mean(
                key, global_config, 'is {} a misspelling of it?'))
    for section, entries in file_config.items():
        for key in entries:
            name, _, argument = key[len('tools.'):].partition('.')
            tool = getattr(cherrypy.tools, name, None) if key.startswith('tools.') else None
            if tool is None or argument in ('on', 'priority', ''):
                continue
            try:
                parameters = inspect.signature(tool.callable).parameters
            except (TypeError, ValueError):
                continue
            if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
                continue
            if argument not in parameters:
                raise SettingError(f'{file_name}: [{section}] {key}: tools.{name} takes no '
                                   f'{argument!r}' + _did_you_mean(
                                       argument, list(parameters), 'did you mean {}?', 0.6))
        for needs, argument in (('tools.staticdir.on', 'tools.staticdir.dir'),
                                ('tools.staticfile.on', 'tools.staticfile.filename')):
            if entries.get(needs) and argument not in entries:
                raise SettingError(f'{file_name}: [{section}] {needs} needs {argument}')


def _did_you_mean(word, choices, phrase='did you mean {}?', cutoff=0.8):
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return f' ({phrase.format(close[0])})' if close else ''


def read_environment(environ, variables=VARIABLES):
    """Return {variable: parsed value} for the variables that are set; SettingError if bad."""
    values = {}
    for name, (_, parse) in variables.items():
        if name in environ:
            try:
                values[name] = parse(environ[name])
            except SettingError as error:
                raise SettingError(f'{name}={environ[name]!r}: {error}') from None
    return values


def load(conf_path, root_dir, environ=os.environ):
    """Read prod.conf and the environment into CherryPy's config; exit 2 on a bad setting."""
    try:
        if not os.path.isfile(conf_path):
            raise SettingError(f'config file {conf_path!r} not found')
        try:
            file_config = reprconf.Parser().dict_from_file(conf_path)
        except Exception as error:  # a typo in prod.conf: name the file and the problem
            said = error  # reprconf's own ValueError is a 1-tuple of the message
            if (type(error) is ValueError and error.args and isinstance(error.args[0], str)
                    and error.args[0].startswith('Config error')):
                said = error.args[0]
            raise SettingError(f'{os.path.basename(conf_path)}: {said}') from None
        headers = file_config.get('global', {}).get('ops.response_headers', {})
        if not (isinstance(headers, dict) and all(
                isinstance(text, str) and text.isascii() and text.isprintable()
                for text in (*headers, *headers.values()))
                and all(name.replace('-', '').isalnum() for name in headers)):
            raise SettingError(f'{os.path.basename(conf_path)}: ops.response_headers: must be '
                               'a dict of header names (letters, digits, -) to values, '
                               'each ASCII text on one line')
        check_file_keys(file_config, os.path.basename(conf_path))
        global_config = dict(file_config.pop('global', {}))
        global_config.update(check_file_values(global_config, os.path.basename(conf_path)))
        variables = dict(VARIABLES, **user_variables(global_config, os.path.basename(conf_path)))
        values = read_environment(environ, variables)
    except SettingError as error:
        refuse(error)

    app_config = file_config
    for name, value in values.items():
        key = variables[name][0]
        if key:
            global_config[key] = value
    _cache_static_files(app_config, global_config.get('ops.static_max_age', 0),
                        override='STATIC_MAX_AGE' in values)
    dev = values.get('DEV', False)
    global_config.update(_development(dev))

    # Relative static paths resolve from the project folder, whatever the working directory.
    app_config.setdefault('/', {}).update({
        'tools.staticdir.root': root_dir, 'tools.staticfile.root': root_dir})
    cherrypy.config.update(global_config)
    # CherryPy has applied the process-wide keys to its objects. It would also copy them into
    # every request's config and walk them there: 4% of the instructions of a request for
    # keys no request reads. Keep them here instead; cherrypy.config keeps the per-request ones.
    process_wide = {key: cherrypy.config.pop(key) for key in list(cherrypy.config)
                    if key.split('.')[0] in PROCESS_WIDE}
    global _current
    _current = Settings(app_config, dev, process_wide)
    return _current


def variable_names(conf_path):
    """Every setting's variable: the server's and those of your own settings in conf_path."""
    names = set(VARIABLES)
    try:
        names |= set(user_variables(reprconf.Parser().dict_from_file(conf_path).get('global', {})))
    except Exception:  # a broken prod.conf: load() says what is wrong, at start
        pass
    return sorted(names)


def refuse(problem):
    """A bad setting: one line naming it, exit status 2, before anything binds."""
    print(f'Bad setting: {problem}', file=sys.stderr)
    raise SystemExit(2)


def _cache_static_files(app_config, max_age, override):
    """Every section serving files, yours included, says how long browsers may keep them:
    its own tools.cache_control.max_age if it sets one, else ops.static_max_age.
    STATIC_MAX_AGE in the environment wins over both."""
    for section in app_config.values():
        if section.get('tools.staticdir.on') or section.get('tools.staticfile.on'):
            section.setdefault('tools.cache_control.on', True)
            if override:
                section['tools.cache_control.max_age'] = max_age
            else:
                section.setdefault('tools.cache_control.max_age', max_age)


if __name__ == '__main__':  # run.sh: which variables to pass on to the container
    print('\n'.join(variable_names(os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'prod.conf'))))
