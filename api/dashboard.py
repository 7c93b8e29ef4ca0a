"""The dashboard at ``/``: a placeholder page until the real dashboard lands."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runrelay</title></head>
<body>
<h1>runrelay</h1>
<p>The API is up. See <a href="/docs">/docs</a> for the endpoints.</p>
</body></html>
"""


@router.get("/", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(_PAGE)
