"""``GET /`` and ``/ui``: a page that races the student against its teacher in a browser.

Static HTML, JS and CSS shipped inside the package (``app/ui/static``; no CDN, no build step). The
page calls the API like any client: ``GET /v1/models`` for the choice of models, ``POST /transcribe``
with ``stream=true`` once per model, ``GET /metrics`` for the live panel — each with the API key the
person typed (``Authorization: Bearer``), kept in the browser's sessionStorage.

A browser cannot send a header when it navigates, so the page itself must load without the key:
:data:`PUBLIC_PATHS` and :data:`PUBLIC_PREFIX` name exactly what is exempt from the API key (use
:func:`is_public`); everything the page *does* still needs it. ``K2D_UI=false`` leaves the router out
(``/`` and ``/ui`` are 404).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "ui" / "static"
PUBLIC_PREFIX = "/ui/static/"
ASSETS = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}
PUBLIC_PATHS = frozenset({"/", "/ui", *(PUBLIC_PREFIX + name for name in ASSETS)})  # no API key needed
NO_CACHE = {"Cache-Control": "no-cache"}  # a new release's page and script arrive together

router = APIRouter(include_in_schema=False)


def is_public(path: str) -> bool:
    """True for the page and its assets: served without the API key (they hold no data, only the page)."""
    return path in PUBLIC_PATHS


@router.get("/")
@router.get("/ui")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=NO_CACHE)


@router.get(PUBLIC_PREFIX + "{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(404, "Not Found")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=NO_CACHE)
