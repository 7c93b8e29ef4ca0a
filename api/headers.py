"""One request header, read off the ASGI scope's own list.

Starlette's ``request.headers.get`` decodes header names until it finds the one asked
for, and a missing one costs a ``KeyError`` raised and caught. A stream's open looks up
two or three headers that are mostly absent (``Accept``, ``Last-Event-ID``), and that was
about 2% of a connect wave's CPU (py-spy, docs/benchmarks.md "Idle followers").
"""

from __future__ import annotations

from starlette.requests import HTTPConnection


def header(request: HTTPConnection, name: bytes) -> str | None:
    """The first value of header `name` (lower case: ASGI servers give names so), or None."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def in_query(request: HTTPConnection, name: str) -> bool:
    """Whether the query string has parameter `name`, parsing it only when it may."""
    raw: bytes = request.scope["query_string"]
    if name.encode() not in raw and b"%" not in raw:  # not even percent-encoded
        return False
    return name in request.query_params
