"""`StreamStore` in process memory, for `runrelay dev`: the Redis scripts' rules in Python.

The logs live in the embedded event log's `MemoryState.logs`, so the tail hub's
`EventLog.wait` follows them as it follows run logs. No method awaits between its
reads and writes, so each is atomic like a script.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.eventlog.memory import MemoryLog, MemoryState
from shared.eventlog.streams import (
    CLOSE,
    MESSAGE,
    AppendOutcome,
    Chunk,
    Producer,
    StreamConfig,
    StreamInfo,
    media_type,
    separator,
)
from shared.models import StoredEvent

_UNBOUNDED = 1 << 62  # a Durable Stream keeps every message until it is deleted or expires


@dataclass
class _Stream:
    config: StreamConfig
    tail: int = 0
    closed: bool = False
    gone: bool = False
    forks: int = 0
    stream_seq: str = ""
    producers: dict[str, tuple[int, int]] = field(default_factory=dict)
    expires_at: float | None = None

    def info(self) -> StreamInfo:
        return StreamInfo(self.config, self.tail, self.closed, self.gone)


class MemoryStreamStore:
    """`StreamStore` on the embedded `MemoryState`."""

    def __init__(self, state: MemoryState) -> None:
        self._s = state
        self.keys = state.keys
        self._streams: dict[str, _Stream] = {}

    def log_key(self, owner: str, path: str) -> str:
        return self.keys.ds_log(owner, path)

    def _get(self, owner: str, path: str) -> _Stream | None:
        key = self.keys.ds_meta(owner, path)
        stream = self._streams.get(key)
        if stream is not None and self._s.expired(stream.expires_at):
            del self._streams[key]
            self._s.logs.pop(self.log_key(owner, path), None)
            return None
        return stream

    def _expire(self, owner: str, path: str, stream: _Stream) -> None:
        config = stream.config
        if config.ttl_s:
            stream.expires_at = time.time() + config.ttl_s
        elif config.expires_ms:
            stream.expires_at = config.expires_ms / 1000
        log = self._s.logs.get(self.log_key(owner, path))
        if log is not None:
            log.expires_at = stream.expires_at

    def _add(self, log: MemoryLog, type_: str, data: bytes) -> None:
        log.add(type_, data, _UNBOUNDED)

    async def create(
        self, owner: str, path: str, config: StreamConfig, messages: list[bytes], closed: bool
    ) -> tuple[str, StreamInfo]:
        current = self._get(owner, path)
        if current is not None:
            if current.gone:
                status = "gone"
            else:
                status = "exists" if current.config.key() == config.key() else "conflict"
            return status, current.info()
        stream = self._streams[self.keys.ds_meta(owner, path)] = _Stream(config)
        log = self._s.logs[self.log_key(owner, path)] = MemoryLog()
        for message in messages:
            self._add(log, MESSAGE, message)
        stream.tail = log.last_id
        if closed:
            self._add(log, CLOSE, b"")
            stream.closed = True
        self._expire(owner, path, stream)
        await self._s.notify()
        return "created", stream.info()

    async def info(self, owner: str, path: str) -> StreamInfo | None:
        stream = self._get(owner, path)
        return None if stream is None else stream.info()

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
        stream = self._get(owner, path)
        if stream is None:
            return AppendOutcome("not_found")
        if stream.gone:
            return AppendOutcome("gone")
        tail, closed = stream.tail, stream.closed
        if producer is not None:
            state = stream.producers.get(producer.id)
            if state is not None:
                epoch, last = state
                if producer.epoch < epoch:
                    return AppendOutcome("stale_epoch", tail, closed, epoch, last)
                if producer.epoch == epoch:
                    if producer.seq <= last:
                        return AppendOutcome("duplicate", tail, closed, epoch, last)
                    if producer.seq > last + 1:
                        return AppendOutcome("gap", tail, closed, epoch, last + 1)
                elif producer.seq != 0:
                    return AppendOutcome("epoch_seq", tail, closed, epoch, last)
            elif producer.seq != 0:
                return AppendOutcome("gap", tail, closed, producer.epoch, 0)
        if closed:
            if not messages and close and producer is None:
                return AppendOutcome("ok", tail, True)
            return AppendOutcome("closed", tail, True)
        if messages and media_type(content_type) != media_type(stream.config.content_type):
            return AppendOutcome("type_mismatch", tail, closed)
        if stream_seq:
            # Python compares str by code point, which for UTF-8 is the byte order too.
            if stream.stream_seq and stream_seq <= stream.stream_seq:
                return AppendOutcome("seq_conflict", tail, closed)
            stream.stream_seq = stream_seq
        log = self._s.logs.setdefault(self.log_key(owner, path), MemoryLog())
        for message in messages:
            self._add(log, MESSAGE, message)
        stream.tail = log.last_id
        if close:
            self._add(log, CLOSE, b"")
            stream.closed = True
        if producer is not None:
            stream.producers[producer.id] = (producer.epoch, producer.seq)
        self._expire(owner, path, stream)
        await self._s.notify()
        epoch, seq = (producer.epoch, producer.seq) if producer is not None else (0, 0)
        return AppendOutcome("ok", stream.tail, stream.closed, epoch, seq)

    async def read(
        self, owner: str, path: str, after: int, limit: int, *, touch: bool = True
    ) -> tuple[StreamInfo, list[StoredEvent]] | None:
        stream = self._get(owner, path)
        if stream is None:
            return None
        if touch and not stream.gone and stream.config.ttl_s:
            self._expire(owner, path, stream)
        log = self._s.logs.get(self.log_key(owner, path))
        events: list[StoredEvent] = []
        if log is not None and limit > 0:
            # Ids are dense from 1 (nothing is trimmed), so the entry after `after` is at `after`.
            events = log.events[after : after + limit]
        return stream.info(), events

    async def page(
        self, owner: str, path: str, after: int, limit: int, max_bytes: int
    ) -> tuple[StreamInfo, Chunk] | None:
        found = await self.read(owner, path, after, limit)
        if found is None:
            return None
        info, events = found
        parts: list[bytes] = []
        size = last = 0
        for event in events:
            if event.type != MESSAGE:
                continue
            if parts and size + len(event.json) > max_bytes:
                break
            parts.append(event.json)
            size += len(event.json)
            last = event.id
        return info, Chunk(separator(info.config.content_type).join(parts), len(parts), last)

    async def retain(self, owner: str, path: str) -> str:
        stream = self._get(owner, path)
        if stream is None:
            return "not_found"
        if stream.gone:
            return "gone"
        stream.forks += 1
        return "ok"

    async def release(self, owner: str, path: str) -> None:
        while path:
            stream = self._get(owner, path)
            if stream is None:
                return
            stream.forks -= 1
            if stream.forks > 0 or not stream.gone:
                return
            del self._streams[self.keys.ds_meta(owner, path)]
            path = stream.config.fork_of

    async def delete(self, owner: str, path: str) -> str:
        stream = self._get(owner, path)
        if stream is None:
            return "not_found"
        if stream.gone:
            return "gone"
        self._s.logs.pop(self.log_key(owner, path), None)
        if stream.forks > 0:
            stream.gone = True
            return "soft"
        del self._streams[self.keys.ds_meta(owner, path)]
        await self.release(owner, stream.config.fork_of)
        return "deleted"
