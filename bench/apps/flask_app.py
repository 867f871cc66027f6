"""One Flask app for every WSGI peer (Flask dev server, gunicorn sync and gthread, waitress, granian)."""
import os

from flask import Flask, send_from_directory

from content import HEALTH_BODY, LANDING_HTML, LOGO_PATH

app = Flask(__name__)


@app.get("/")
def landing():
    return LANDING_HTML, 200, {"Content-Type": "text/html; charset=utf-8"}


@app.get("/healthcheck")
def healthcheck():
    return HEALTH_BODY, 200, {"Content-Type": "text/html; charset=utf-8"}


@app.get("/logo.png")
def logo():
    # Served from disk like a static file, as the template and the 2017 configuration do.
    return send_from_directory(os.path.dirname(LOGO_PATH), os.path.basename(LOGO_PATH))
