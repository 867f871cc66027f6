"""The three things every benchmarked server serves, shared so each sends the same bytes.

The landing HTML and logo come from the project when it has them (`static/logo.png`);
until then a small PNG is made here, so the benchmark runs on any checkout.
"""
import os
import struct
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Exactly what the template's readiness probe answers.
HEALTH_BODY = b"Yay<br />\n"


def _tiny_png(path, size=64):
    """Write a plain size x size RGB PNG (stdlib only) and return its path."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes((x * 4 % 256, 80, 160)) * size for x in range(size))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)
    return path


def logo_path():
    """The project's logo, or a generated one beside this file (git-ignored)."""
    shipped = os.path.join(ROOT, "static", "logo.png")
    if os.path.exists(shipped):
        return shipped
    made = os.path.join(os.path.dirname(os.path.abspath(__file__)), "logo.png")
    return made if os.path.exists(made) else _tiny_png(made)


LOGO_PATH = logo_path()
with open(LOGO_PATH, "rb") as _f:
    LOGO_BYTES = _f.read()

# A landing page of the same shape as the template's: title, logo, a line of text.
LANDING_HTML = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Prototype server</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<main>
<img src="/logo.png" alt="logo" width="128" height="128">
<h1>It works</h1>
<p>This server was started from the CherryPy prototype server template.
Health: <a href="/healthcheck">/healthcheck</a>.</p>
</main>
</body>
</html>
"""
