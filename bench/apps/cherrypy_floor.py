"""The least CherryPy can cost per request here: the floor under any CherryPy template.

The template's connection handling (production.Server: accept bursts, PacedQueue, one
send per answer, keep-alive limits) with every per-request extra of the template removed:
no access log, no security headers, no gzip or encode tool (the handlers return bytes), no
dashboard counters, no proxy tool. Only `tools.staticfile` stays, to serve the logo.
If this row is below a target, no setting of the template can reach that target: the rest
of the time is CherryPy's own request pipeline and cheroot's HTTP parsing.

Usage: python cherrypy_floor.py PORT   (opt-in row of bench/run.sh: --servers cherrypy-floor,...)
"""
import sys

import cherrypy

from cherrypy_2017 import Landing  # the same site; only the configuration differs
from content import LOGO_PATH, ROOT

sys.path.insert(0, ROOT)
from server import production  # noqa: E402  (the template's server, imported from the project root)


if __name__ == "__main__":
    cherrypy.config.update({
        "environment": "production", "log.screen": False, "log.access_file": "",
        "server.socket_host": "127.0.0.1", "server.socket_port": int(sys.argv[1]),
        "server.thread_pool": 100, "server.socket_queue_size": 1024,
        "tools.encode.on": False,  # the bodies are bytes already
    })
    cherrypy.tree.mount(Landing(), "/", {
        "/healthcheck": {"tools.trailing_slash.on": False},  # /healthcheck answers 200, like the template
        "/logo.png": {"tools.staticfile.on": True, "tools.staticfile.filename": LOGO_PATH},
    })
    cherrypy.server.httpserver = production.Server(cherrypy.server)
    cherrypy.server.httpserver.tune(keep_alive_timeout=65, keep_alive_limit=1000)
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()
