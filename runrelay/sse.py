"""A pure Server-Sent Events decoder: bytes in, frames out, no I/O.

httpx-sse hides comment lines, but the client needs to see ``: ping`` heartbeats
(they prove the connection is alive) and ``retry:`` (the server's minimum
reconnect delay), so this decoder reports all three kinds of item::

    decoder = SSEDecoder()
    for chunk in chunks:
        for item in decoder.feed(chunk):
            match item:
                case SSEFrame(): ...
                case SSEComment(): ...
                case SSERetry(): ...

It follows the WHATWG parsing rules (``\\r\\n``, ``\\n`` and ``\\r`` line ends,
a leading BOM, one optional space after the colon, multi-line ``data``) with
one deliberate difference: ``SSEFrame.id`` is the ``id:`` of *that* frame, or
``None`` when the frame had none, instead of the inherited "last event id" —
the client must not move its cursor on frames without an id (``stream.gap``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SSEFrame:
    """One dispatched event: ``event`` defaults to ``"message"``, ``data`` lines joined by \\n."""

    event: str
    data: str
    id: str | None = None


@dataclass(frozen=True, slots=True)
class SSEComment:
    """A comment line (``: ping``), text without the colon and its one following space."""

    text: str


@dataclass(frozen=True, slots=True)
class SSERetry:
    """A ``retry: <ms>`` field: the server's reconnection delay."""

    ms: int


SSEItem = SSEFrame | SSEComment | SSERetry


@dataclass(slots=True)
class SSEDecoder:
    """Incremental decoder; chunk boundaries may fall anywhere, even inside a character."""

    _buffer: bytearray = field(default_factory=bytearray)
    _skip_lf: bool = False  # the previous chunk ended in \r; a leading \n belongs to it
    _started: bool = False
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEItem]:
        """Decode one chunk; returns the items completed by it (possibly none)."""
        if not chunk:
            return []
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        self._buffer += chunk
        items: list[SSEItem] = []
        for line in self._complete_lines():
            item = self._line(line)
            if item is not None:
                items.append(item)
        return items

    def _complete_lines(self) -> Iterator[bytes]:
        buf = self._buffer
        start = 0
        while True:
            cr, lf = buf.find(b"\r", start), buf.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            end = lf if cr == -1 or (lf != -1 and lf < cr) else cr
            yield bytes(buf[start:end])
            if buf[end] == 0x0D:
                if end + 1 < len(buf):
                    start = end + 2 if buf[end + 1] == 0x0A else end + 1
                else:
                    # \r at the very end: a \n may arrive in the next chunk.
                    self._skip_lf = True
                    start = end + 1
            else:
                start = end + 1
        del buf[:start]

    def _line(self, raw: bytes) -> SSEItem | None:
        line = raw.decode("utf-8", "replace")
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        name, colon, value = line.partition(":")
        value = value.removeprefix(" ")
        if not name and colon:
            return SSEComment(value)
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            return SSERetry(int(value))
        # Unknown field names are ignored, as the standard says.
        return None

    def _dispatch(self) -> SSEFrame | None:
        frame = None
        # A block with no data line dispatches nothing (an id-only block is dropped too,
        # unlike a browser: our server never sends one, and a phantom cursor move is worse).
        if self._data:
            data = "\n".join(self._data)
            frame = SSEFrame(event=self._event or "message", data=data, id=self._id)
        self._event, self._data, self._id = "", [], None
        return frame


def decode(chunks: Iterable[bytes]) -> list[SSEItem]:
    """Decode a whole byte stream at once (for tests and small tools)."""
    decoder = SSEDecoder()
    return [item for chunk in chunks for item in decoder.feed(chunk)]
