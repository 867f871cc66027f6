"""JSON errors for JSON handlers: a handler with tools.json_out answers its errors (400 for
a bad body, 404, 405, 413, 422 of your own, 500...) as JSON with the same status:

    {"status": "405 Method Not Allowed", "message": "..."}

Other pages keep production.error_page's short HTML. run.py installs it. A JSON API:

    @cherrypy.expose
    @cherrypy.tools.allow(methods=['POST'])  # else GET reaches the handler without a body
    @cherrypy.tools.json_in()                # the body, parsed: cherrypy.request.json
    @cherrypy.tools.json_out()               # the return value, as JSON
    def greet(self):
        return {'hello': cherrypy.request.json['name']}
"""
import json

import cherrypy

from . import production


def error_page(status, message, traceback, version):
    """CherryPy's error page hook: JSON for JSON handlers, production's page for the rest."""
    config = cherrypy.serving.request.config or {}
    if not config.get('tools.json_out.on'):
        return production.error_page(status, message, traceback, version)
    cherrypy.serving.response.headers['Content-Type'] = 'application/json'
    answer = {'status': status, 'message': message}  # CherryPy's own words for a 500: no details
    if traceback:  # only with DEV=1, as on the HTML pages
        answer['traceback'] = traceback
    return json.dumps(answer)


def install(app):
    """Answer the errors of `app`'s JSON handlers in JSON."""
    app.merge({'/': {'error_page.default': error_page}})
