"""Durable Streams in the event log: the `StreamStore` Protocol and the values it speaks.

A Durable Stream (the open protocol served under ``/ds/``) is an owned, append-only
sequence of messages. Each message is one POST's bytes (or one element of a JSON
batch) and gets the next sequence number; the sequence numbers are the Redis stream
ids ``0-<seq>`` of the stream's log, so the API's tail hub follows a Durable Stream
exactly like a run log. A closed stream's log ends with one close marker entry
(type ``c``) right after its last message, which is how live readers learn of the
close in the same step that stored the final append.

Every method is one atomic step on the backend (one Lua script on Redis), except
`delete`, which after its own step releases the fork references up the chain, one
stream (one hash slot) at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from shared.models import StoredEvent

MESSAGE = "m"
CLOSE = "c"


def media_type(content_type: str) -> str:
    """``Text/Plain; charset=utf-8`` -> ``text/plain``: what two content types compare by."""
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """What a PUT fixes; a second PUT with the same config is a 200, else a 409."""

    content_type: str
    ttl_s: int | None = None
    expires_at: str | None = None  # RFC 3339, as given
    expires_ms: int | None = None  # the same instant, unix ms
    fork_of: str = ""  # the source stream's path, for a fork
    fork_offset: int = 0
    fork_sub: int = 0

    def key(self) -> str:
        """The canonical form two configs are compared by (stored beside the stream)."""
        return "|".join(
            [
                media_type(self.content_type),
                str(self.ttl_s or ""),
                str(self.expires_ms or ""),
                self.fork_of,
                str(self.fork_offset),
                str(self.fork_sub),
            ]
        )


@dataclass(frozen=True, slots=True)
class StreamInfo:
    config: StreamConfig
    tail: int  # sequence number of the last message, 0 when none
    closed: bool
    gone: bool  # soft-deleted while forks still reference it: 410


class Producer(NamedTuple):
    id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What one append did.

    `status` is one of ``ok``, ``duplicate`` (the producer sent this seq already),
    ``stale_epoch``, ``gap``, ``epoch_seq`` (a new epoch not starting at 0),
    ``closed``, ``not_found``, ``gone``, ``type_mismatch``, ``seq_conflict``
    (Stream-Seq not above the last one). `epoch`/`seq` are the producer's epoch and
    highest accepted seq (for ``gap``: the expected seq).
    """

    status: str
    tail: int = 0
    closed: bool = False
    epoch: int = 0
    seq: int = 0


def separator(content_type: str) -> bytes:
    """What a page joins messages with: a comma in JSON mode (the body adds the brackets)."""
    return b"," if media_type(content_type) == "application/json" else b""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Messages after an offset, joined for one response (`StreamStore.page`)."""

    body: bytes  # the messages, joined by `separator`
    count: int
    last: int  # sequence number of the last message in `body` (0 when count is 0)


class StreamStore(Protocol):
    """Durable Streams: create, append (with idempotent producers), read, delete, fork refs."""

    def log_key(self, owner: str, path: str) -> str:
        """The key of the stream's log, for the tail hub (`EventLog.wait` reads it)."""

    async def create(
        self, owner: str, path: str, config: StreamConfig, messages: list[bytes], closed: bool
    ) -> tuple[str, StreamInfo]:
        """Create with initial messages: ``created``, ``exists`` (same config),
        ``conflict`` or ``gone``, with the stream as it is after."""

    async def info(self, owner: str, path: str) -> StreamInfo | None:
        """The stream's metadata (does not extend a sliding TTL)."""

    async def append(
        self,
        owner: str,
        path: str,
        content_type: str,
        messages: list[bytes],
        *,
        close: bool = False,
        stream_seq: str = "",
        producer: Producer | None = None,
    ) -> AppendOutcome:
        """Append messages (none: close only), checking producer, closure, type, Stream-Seq."""

    async def read(
        self, owner: str, path: str, after: int, limit: int, *, touch: bool = True
    ) -> tuple[StreamInfo, list[StoredEvent]] | None:
        """Up to `limit` log entries after `after` (messages and the close marker)."""

    async def page(
        self, owner: str, path: str, after: int, limit: int, max_bytes: int
    ) -> tuple[StreamInfo, Chunk] | None:
        """Up to `limit` messages after `after`, no more than fit in `max_bytes` (but at
        least one), joined by `separator(content type)`: a response's body without an
        object per message. Extends a sliding TTL like `read`."""

    async def retain(self, owner: str, path: str) -> str:
        """A fork now references this stream: ``ok``, ``not_found`` or ``gone``."""

    async def release(self, owner: str, path: str) -> None:
        """Drop one fork reference; a soft-deleted stream left without any is removed
        (and releases its own source, and so on up the chain)."""

    async def delete(self, owner: str, path: str) -> str:
        """``deleted``, ``soft`` (forks reference it: 410 from now on), ``not_found``, ``gone``."""
