"""In the Python processes that the suites' tests start (CherryPy's test_states runs its
server as `python -m cherrypy` in a child), the same as plugin.py does in the pytest process:
loopback-only binds and, in template mode, the template's server. plugin.py sets
UPSTREAM_CHILD=1 for its children; other Python processes are left alone."""
import os

if os.environ.get('UPSTREAM_CHILD') == '1':
    import plugin  # noqa: F401  (it does its work when imported)
