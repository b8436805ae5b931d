"""The API description pages, /docs (Swagger UI) and /redoc (ReDoc), served with no request beyond this service.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so on a machine without internet they are blank.
These pages are FastAPI's (``get_swagger_ui_html``, ``get_redoc_html``) pointed at the same JavaScript, CSS and
favicon as shipped by the ``fastapi-offline`` distribution (its ``static/`` folder: swagger-ui-dist 5 and
redoc 2 bundles), which the app serves under /docs/assets/. Like /openapi.json they are open (no API key):
they describe the API, and the operations themselves still need a key (the Authorize button takes it).
The routes are left out of the OpenAPI document.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

ASSET_FOLDER = Path(fastapi_offline.__file__).parent / "static"
ASSET_PATH = "/docs/assets"
# The files of ASSET_FOLDER the pages load, with their media types; no other name is served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}
# Swagger UI would ask validator.swagger.io for a badge about the document: off, that is another site.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# The pages may load from this service only: ReDoc's sidebar always draws the Redocly logo from cdn.redoc.ly
# (hidden when it fails to load), which this keeps the browser from fetching. FastAPI's Swagger UI page starts
# with an inline script and both libraries set inline styles; ReDoc's search runs in a worker made from a blob.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)

router = APIRouter(include_in_schema=False)


def _asset_url(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}{ASSET_PATH}/{name}"


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


def _from_here_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over /openapi.json: every operation, with "Try it out"."""
    return _from_here_only(
        get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=_asset_url(request, "swagger-ui-bundle.js"),
            swagger_css_url=_asset_url(request, "swagger-ui.css"),
            swagger_favicon_url=_asset_url(request, "favicon.png"),
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc over /openapi.json: the same description as one long page."""
    favicon = _asset_url(request, "favicon.png")
    script = _asset_url(request, "redoc.standalone.js")
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=script,
        redoc_favicon_url=favicon,
        with_google_fonts=False,
    )
    return _from_here_only(page)


@router.get(f"{ASSET_PATH}/{{name}}")
def asset(name: str) -> FileResponse:
    """One file of the pages (cached by the browser: ETag and Last-Modified)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no such asset {name!r}; the assets are {', '.join(ASSETS)}")
    return FileResponse(ASSET_FOLDER / name, media_type=media_type)
