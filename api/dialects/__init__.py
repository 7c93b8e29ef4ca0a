"""Dialects: the same runs and logs in the shapes existing clients speak (SPEC §9).

Each is a thin router: it maps native events to its shape and its cursor to the
native cursor, and streams through `api.streams.event_stream` with its own framer.
"""

from __future__ import annotations

from fastapi import APIRouter

from api.dialects import agentos, chat, topics

ROUTERS: tuple[APIRouter, ...] = (agentos.router, chat.router, topics.router)

__all__ = ["ROUTERS"]
