"""A raw ASGI app for uvicorn: no framework at all, so it marks the ceiling for Python here."""
from content import HEALTH_BODY, LANDING_HTML, LOGO_BYTES

HTML = [(b"content-type", b"text/html; charset=utf-8")]
ROUTES = {
    "/": (HTML, LANDING_HTML),
    "/healthcheck": (HTML, HEALTH_BODY),
    "/logo.png": ([(b"content-type", b"image/png")], LOGO_BYTES),
}
NOT_FOUND = ([(b"content-type", b"text/plain")], b"Not found\n")


async def app(scope, receive, send):
    if scope["type"] != "http":  # lifespan events: nothing to set up
        return
    headers, body = ROUTES.get(scope["path"], NOT_FOUND)
    await send({"type": "http.response.start", "status": 200 if scope["path"] in ROUTES else 404,
                "headers": headers + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
