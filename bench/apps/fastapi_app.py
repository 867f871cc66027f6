"""The FastAPI app for the fastapi-uvicorn row: the same three answers, written as FastAPI's docs show."""
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse

from content import HEALTH_BODY, LANDING_HTML, LOGO_PATH

app = FastAPI()


# `async def`, as FastAPI's tutorial writes handlers: they run on the event loop, not in its thread pool.
@app.get("/", response_class=HTMLResponse)
async def landing():
    return HTMLResponse(LANDING_HTML)


@app.get("/healthcheck", response_class=HTMLResponse)
async def healthcheck():
    return HTMLResponse(HEALTH_BODY)


@app.get("/logo.png")
async def logo():
    # Served from disk like a static file, as the template and the 2017 configuration do.
    return FileResponse(LOGO_PATH, media_type="image/png")
