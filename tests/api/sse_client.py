"""A small SSE reader for tests: frames exactly as the wire carries them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import orjson


@dataclass
class Frame:
    id: int | None = None
    event: str | None = None
    data: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, object]:
        assert self.data is not None
        value: dict[str, object] = orjson.loads(self.data)
        return value


async def frames(response: httpx.Response) -> AsyncIterator[Frame]:
    """Each blank-line-terminated block as a Frame (comments included, e.g. ``: ping``)."""
    current = Frame()
    touched = False
    async for line in response.aiter_lines():
        if line == "":
            if touched:
                yield current
            current, touched = Frame(), False
            continue
        touched = True
        if line.startswith(":"):
            current.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            current.id = int(value)
        elif name == "event":
            current.event = value
        elif name == "data":
            current.data = value if current.data is None else current.data + "\n" + value
        elif name == "retry":
            current.retry = int(value)


async def events(response: httpx.Response) -> AsyncIterator[Frame]:
    """Only frames that carry an event id (skips retry, heartbeats, meta frames)."""
    async for frame in frames(response):
        if frame.id is not None:
            yield frame
