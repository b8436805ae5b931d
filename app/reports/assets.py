"""The report's scripts, served by the app itself (no CDN): plotly.js and the report's own plotting code.

plotly.js is the cartesian bundle vendored in app/static/vendor (its README says where it comes from). Each
URL carries a fingerprint of the file's content, so a browser may keep a file for a year: a changed file has a
new URL. Like /docs/assets the files are open (library code, no data); the data the plots draw comes from the
API's own JSON tables, fetched with GET and the page's credentials.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_FOLDER = Path(__file__).resolve().parent.parent / "static"
ASSET_PATH = "/assets"
# The files served, by the name in their URL: (path under STATIC_FOLDER, media type); no other name is served.
ASSETS: dict[str, tuple[str, str]] = {
    "plotly-cartesian-4.1.1.min.js": ("vendor/plotly-cartesian-4.1.1.min.js", "text/javascript"),
    "report-plots.js": ("report-plots.js", "text/javascript"),
}
# The scripts of the report page, in the order they load.
REPORT_SCRIPTS: tuple[str, ...] = ("plotly-cartesian-4.1.1.min.js", "report-plots.js")
CACHE_CONTROL = "public, max-age=31536000, immutable"

router = APIRouter(include_in_schema=False)


@cache
def fingerprint(name: str) -> str:
    """The first 12 hex digits of the SHA-256 of an asset's content."""
    return hashlib.sha256((STATIC_FOLDER / ASSETS[name][0]).read_bytes()).hexdigest()[:12]


def asset_url(name: str) -> str:
    """The URL of an asset, with its content's fingerprint (a changed file gets a new URL)."""
    return f"{ASSET_PATH}/{name}?v={fingerprint(name)}"


@router.get(f"{ASSET_PATH}/{{name}}")
def asset(name: str) -> FileResponse:
    """One script of the report, cached by the browser for a year (its URL changes with its content)."""
    found = ASSETS.get(name)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no such asset {name!r}; the assets are {', '.join(ASSETS)}")
    path, media_type = found
    return FileResponse(STATIC_FOLDER / path, media_type=media_type, headers={"Cache-Control": CACHE_CONTROL})
