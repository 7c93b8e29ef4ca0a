"""How a stream's events become bytes: the native SSE frames, or a dialect's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from api import sse
from api.tail import Frame
from shared.models import StoredEvent


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """How events become bytes. ``framer=None`` is the native format (the hub's bytes)."""

    framer: Callable[[StoredEvent], bytes] | None = None
    gap: Callable[[int, int], bytes] = sse.gap
    error: Callable[[str, str], bytes] = sse.error
    heartbeat: bytes = sse.PING
    media_type: str = sse.EVENT_STREAM

    @property
    def native(self) -> bool:
        """The hub's bytes go out as they are (and may be written by the hub itself)."""
        return self.framer is None

    def replayed(self, event: StoredEvent) -> bytes:
        if self.framer is not None:
            return self.framer(event)
        return sse.frame(event.id, event.type, event.json)

    def live(self, frame: Frame) -> bytes:
        return frame.data if self.framer is None else self.framer(frame.event)


NATIVE = StreamFormat()
