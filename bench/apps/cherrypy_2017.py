"""The 2017 blog template's server, reconstructed: quickstart, 100 threads, every other setting default.

Usage: python cherrypy_2017.py PORT
"""
import sys

import cherrypy

from content import HEALTH_BODY, LANDING_HTML, LOGO_PATH


class HealthCheck(object):
    @cherrypy.expose
    def index(self):
        return HEALTH_BODY


class Landing(object):
    healthcheck = HealthCheck()

    @cherrypy.expose
    def index(self):
        return LANDING_HTML


if __name__ == "__main__":
    # The two settings the 2017 template changed: its port and a 100-thread pool.
    cherrypy.config.update({"server.socket_port": int(sys.argv[1]), "server.thread_pool": 100})
    cherrypy.quickstart(Landing(), "/", {
        "/logo.png": {"tools.staticfile.on": True, "tools.staticfile.filename": LOGO_PATH},
    })
