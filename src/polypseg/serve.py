"""`polypseg serve`: the web app and the HTTP API, one process, the model loaded once.

Sits on top of the package: it imports the routers, nothing imports it. ``create_app`` builds the FastAPI
app from one router per resource (``serve_model``: the model; ``serve_frames``: frames; ``serve_videos``:
video jobs; ``serve_live``: the live WebSocket; ``serve_sites``: site profiles; ``serve_pages``: the page and
the API docs), all sharing the ``serve_state.State`` made in the lifespan; ``serve`` runs it on uvicorn. The
page in ``static/`` calls the same endpoints as any client, and every frame, whether uploaded, streamed live
or part of a video, is described by ``polypseg.predict.describe``.

Safe by default: loopback only unless told otherwise, answers only to allowed Host names (no DNS
rebinding) and to WebSockets from no page or a page of an allowed host, an optional bearer token on every
request, upload size limits (those three are the middlewares of ``guards``), a pixel limit checked on
the image header before decoding, one JSON error shape, bounded concurrency (503 beyond), uploads in temporary folders removed when the request or job
ends, and no access log (paths and file names never reach a log).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from . import __version__
from .errors import PolypsegError
from .guards import Guard, HostGuard, allowed_hosts, bind_names
from .predict import Predictor
from .serve_frames import png_bytes, segment_frame
from .serve_frames import router as frames_router
from .serve_live import live_step
from .serve_live import router as live_router
from .serve_model import router as model_router
from .serve_pages import add_offline_docs, add_static, docs_assets
from .serve_pages import router as pages_router
from .serve_sites import router as sites_router
from .serve_state import (RESEARCH_NOTE, TOKEN_ENV, ServeSettings, State, install_error_handlers, load_predictor,
                          model_info)
from .serve_videos import JobManager, segment_video
from .serve_videos import router as videos_router

__all__ = ["RESEARCH_NOTE", "ServeSettings", "background_server", "create_app", "live_step", "load_predictor",
           "model_info", "png_bytes", "segment_frame", "segment_video", "serve", "uvicorn_config"]

ROUTERS = (model_router, frames_router, videos_router, live_router, sites_router, pages_router)


def create_app(predictor_or_settings: Predictor | ServeSettings | None = None,
               settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI app. Give a loaded predictor (tests, the Python API) or settings to load one when the
    app starts; ``settings`` carries the limits, the token and the allowed hosts (default: ServeSettings(),
    which answers to loopback names only)."""
    if isinstance(predictor_or_settings, ServeSettings):
        settings, predictor = predictor_or_settings, None
    else:
        predictor = predictor_or_settings
        settings = settings or ServeSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        model = predictor if predictor is not None else await run_in_threadpool(load_predictor, settings)
        workdir = Path(tempfile.mkdtemp(prefix="polypseg-serve-"))
        jobs = JobManager(model, workdir, settings.max_jobs, settings.keep_jobs)
        state = State(model, settings, workdir, jobs)
        app.state.polypseg = state
        try:
            yield
        finally:
            state.close()
            shutil.rmtree(workdir, ignore_errors=True)

    assets = docs_assets()  # None: FastAPI's own /docs, whose files come from a CDN
    app = FastAPI(title="polypseg", version=__version__, lifespan=lifespan,
                  description=f"Polyp segmentation for colonoscopy frames and video. {RESEARCH_NOTE}",
                  **({"docs_url": None, "redoc_url": None} if assets else {}))
    if assets:
        add_offline_docs(app, assets)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    add_static(app)
    app.add_middleware(Guard, token=settings.token, max_bytes=int(settings.max_upload_mb * 2**20),
                       max_video_bytes=int(settings.max_video_mb * 2**20))
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts(settings.allowed_hosts))  # outermost: first
    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uvicorn_config(app: FastAPI, host: str = "127.0.0.1", port: int = 8000):
    """uvicorn's settings for polypseg: no access log, since request paths and upload names must never
    reach a log; uvicorn's own start and error lines stay."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info")


def serve(settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000, insecure: bool = False) -> None:
    """Load the model, print the address to open, serve until Ctrl-C."""
    import uvicorn

    settings.token = settings.token or os.environ.get(TOKEN_ENV) or None
    if not _is_loopback(host) and settings.token is None and not insecure:
        raise PolypsegError(
            f"--host {host} exposes the server to the network: give a token (--token or {TOKEN_ENV}) so that "
            "every request must carry it, or pass --insecure on a network you trust."
        )
    settings.allowed_hosts = allowed_hosts([*settings.allowed_hosts, *bind_names(host)])  # checked before loading
    site = f", site {settings.site}" if settings.site else ""
    print(f"polypseg: loading the model ({settings.backend} on {settings.device}{site})...", flush=True)
    app = create_app(load_predictor(settings), settings)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{port}/" + (f"?token={settings.token}" if settings.token else "")
    print(f"polypseg: open {url}  (API docs: http://{shown}:{port}/docs; Ctrl-C stops)\n"
          f"polypseg: {RESEARCH_NOTE}", flush=True)
    if not _is_loopback(host):
        print(f"polypseg: answering to the hosts {', '.join(settings.allowed_hosts)}; for another name or IP "
              "that clients use: --allowed-host NAME", flush=True)
    uvicorn.Server(uvicorn_config(app, host, port)).run()


@contextmanager
def background_server(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """Run ``app`` on uvicorn in a thread on a free port of ``host``; yields its base URL. For the
    browser tests, the benchmark and the screenshots: the real server, in-process."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn_config(app))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="polypseg-uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise PolypsegError("the server did not start")
            time.sleep(0.05)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
