"""`polypseg serve`'s pages: the web page (``static/``, plain JS), its icon, and the API docs (``/docs``,
``/redoc``) with their files served by this server, not a CDN."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs-assets"  # Swagger UI's and ReDoc's files, served from the installed environment

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "max-age=86400"})


def add_static(app: FastAPI) -> None:
    """The page's files under ``/static``."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def docs_assets() -> Path | None:
    """The folder of Swagger UI's and ReDoc's JavaScript and CSS that the ``fastapi-offline`` package ships
    (the ``serve`` extra installs it), or None where it is not installed."""
    try:
        from importlib.resources import files

        folder = Path(str(files("fastapi_offline") / "static"))
    except ImportError:
        return None
    return folder if (folder / "swagger-ui-bundle.js").is_file() and (folder / "swagger-ui.css").is_file() else None


def add_offline_docs(app: FastAPI, folder: Path) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their files served by this server from ``folder``, as
    FastAPI's "self-hosting JavaScript and CSS for docs" does: FastAPI's own pages load them from a CDN,
    and stay blank on a hospital network without internet."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=folder), name="docs-assets")
    redirect = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API", oauth2_redirect_url=redirect,
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css", swagger_favicon_url=f"{root}/favicon.ico")

    @app.get(redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    if (folder / "redoc.standalone.js").is_file():
        @app.get("/redoc", include_in_schema=False)
        def redoc(request: Request) -> HTMLResponse:
            root = request.scope.get("root_path", "")
            return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
                                  redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
                                  redoc_favicon_url=f"{root}/favicon.ico", with_google_fonts=False)
