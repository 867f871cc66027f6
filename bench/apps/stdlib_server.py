"""Python's own http.server.ThreadingHTTPServer with a handler as people write it (defaults kept).

Usage: python stdlib_server.py PORT
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from content import HEALTH_BODY, LANDING_HTML, LOGO_BYTES

ROUTES = {
    "/": ("text/html; charset=utf-8", LANDING_HTML),
    "/healthcheck": ("text/html; charset=utf-8", HEALTH_BODY),
    "/logo.png": ("image/png", LOGO_BYTES),
}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        content_type, body = ROUTES.get(self.path, ("text/plain", b"Not found\n"))
        self.send_response(200 if self.path in ROUTES else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
