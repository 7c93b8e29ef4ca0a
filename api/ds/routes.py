"""The Durable Streams protocol under ``/ds/`` (PROTOCOL.md v1; SPEC §9).

    PUT    /ds/{path}   create (201; 200 same config; 409 different), optionally a fork
    POST   /ds/{path}   append (idempotent producers, Stream-Seq, Stream-Closed)
    GET    /ds/{path}   catch-up; ?live=long-poll | sse
    HEAD   /ds/{path}   metadata
    DELETE /ds/{path}
    GET    /ds/runs/{run_id}, /ds/sessions/{session_id}   runrelay's logs, read-only

Streams belong to the caller (runrelay's auth applies); another owner's path is
another stream. Answers are built here, not raised, so that every one of them —
errors included — carries the protocol's security and CORS headers.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import NamedTuple

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.deps import ApiState
from api.ds import protocol, reads
from api.ds.protocol import CLOSED, NEXT_OFFSET, UP_TO_DATE, ProtocolError
from api.ds.reads import Source, View
from api.responses import error_response, runrelay_error
from api.server_assumptions import DETACH
from api.sse import EVENT_STREAM
from shared.errors import RunRelayError
from shared.eventlog.streams import (
    MESSAGE,
    Chunk,
    Producer,
    StreamConfig,
    StreamInfo,
    media_type,
)
from shared.models import TERMINAL, TERMINAL_EVENTS

log = logging.getLogger(__name__)

DEFAULT_TYPE = "application/octet-stream"
_CACHE_CHUNK = "private, max-age=60, stale-while-revalidate=300"


class Answer(Response):
    """A Starlette response whose headers are built straight as bytes: the security and
    CORS headers of every answer are encoded once for the process."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.body = body
        self.background = None
        self.raw_headers = raw_headers


_SECURITY_RAW = [(k.lower().encode(), v.encode()) for k, v in protocol.SECURITY_HEADERS.items()]


def answer(
    status: int,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    if content_type is not None:
        headers = {**(headers or {}), "Content-Type": content_type}
    raw = _SECURITY_RAW.copy()
    if headers:
        raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if status >= 200 and status not in (204, 304):
        raw.append((b"content-length", str(len(body)).encode()))
    return Answer(status, raw, body)


def refuse(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return answer(status, headers, message.encode(), "text/plain; charset=utf-8")


async def body_of(request: Request) -> bytes:
    """The request's body, read off `receive` as it is (Starlette's `Request.body`, an
    async generator in a context manager, was a twelfth of an append's CPU)."""
    receive = request.receive
    message = await receive()
    chunks: list[bytes] = []
    while True:
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()  # also what BodyLimit says of a body over the limit
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        message = await receive()


def _stream_path(path: str) -> str:
    if not path or len(path) > 1024 or "\x00" in path:
        raise ProtocolError(400, "stream paths are 1-1024 characters")
    return path


def _query_offset(request: Request) -> str | None:
    values = request.query_params.getlist("offset")
    if len(values) > 1:
        raise ProtocolError(400, "one offset, please")
    if values and not values[0]:
        raise ProtocolError(400, "empty offset")
    return values[0] if values else None


def _info_headers(info: StreamInfo) -> dict[str, str]:
    headers = {NEXT_OFFSET: protocol.offset(info.tail), "Content-Type": info.config.content_type}
    if info.closed:
        headers[CLOSED] = "true"
    return headers


# Sources ------------------------------------------------------------------------------
def _view(found: tuple[StreamInfo, Chunk] | None, after: int) -> View | None:
    """A `StreamStore.page` answer as a page after `after` (None: no such stream)."""
    if found is None or found[0].gone:
        return None
    now, chunk = found
    if not chunk.count:
        return View([], min(after, now.tail), now.tail, now.closed)
    # One element: the messages joined as a body joins them (`protocol.body_of`).
    return View([chunk.body], chunk.last, now.tail, now.closed)


async def _page(state: ApiState, owner: str, path: str, after: int) -> View | None:
    found = await state.runtime.streams.page(
        owner, path, after, reads.CHUNK_MESSAGES, reads.CHUNK_BYTES
    )
    return _view(found, after)


def _stream_source(state: ApiState, owner: str, path: str, info: StreamInfo) -> Source:
    streams = state.runtime.streams

    async def page(after: int) -> View | None:
        return await _page(state, owner, path, after)

    return Source(info.config.content_type, streams.log_key(owner, path), info.tail, page)


def _first_read(request: Request) -> int | None:
    """Where a catch-up or long-poll GET starts (-1: at the tail, ``now``; None: SSE or
    malformed, the read proper says why): the metadata and the first page then come in
    one call."""
    params = request.query_params
    live = params.get("live")
    values = params.getlist("offset")
    if live not in (None, "long-poll") or len(values) > 1 or (live and not values):
        return None
    raw = values[0] if values else "-1"
    if raw == "now":
        return -1
    try:
        return protocol.parse_offset(raw)
    except ProtocolError:
        return None


async def _log_source(state: ApiState, owner: str, kind: str, ident: str) -> Source | None:
    """A run's or a session's log as a read-only JSON stream (404 for another owner's)."""
    runtime = state.runtime
    keys = runtime.log.keys
    run_id = ""
    if kind == "runs":
        record = await runtime.store.get_run(ident)
        if record is None or record.owner != owner:
            return None
        key, run_id = keys.run_log(record.session_id, ident), ident
    else:
        if not await runtime.store.session_exists(owner, ident):
            return None
        key = keys.session_log(ident, owner)

    async def page(after: int) -> View | None:
        closed = False
        if run_id:
            record = await runtime.store.get_run(run_id)
            if record is None:
                return None
            # Read after the record: a terminal status means the log holds the terminal event.
            closed = record.status in TERMINAL
        # Not the hub's shared read: live readers share this page under their own rule
        # (api.ds.reads.page), which a read joined underneath could break.
        got = await runtime.log.read(key, after, reads.CHUNK_MESSAGES)
        if got.first_id and after < got.first_id - 1:
            raise ProtocolError(410, f"offset {after} is older than the log's retention")
        # The terminal event may land between the two reads: then it closes the stream
        # itself (nothing will ever wake a live reader waiting past it).
        closed = closed or bool(run_id and got.events and got.events[-1].type in TERMINAL_EVENTS)
        messages = [(e.id, e.json) for e in got.events]
        return reads.cut(messages, min(after, got.last_id), got.last_id, closed)

    # The tail only: reading it must not answer 410 for a log trimmed at its start.
    tail = (await state.hub.read(key, 0, 1)).last_id
    return Source("application/json", key, tail, page)


# Reads --------------------------------------------------------------------------------
_SSE_HEADERS = {
    **protocol.SECURITY_HEADERS,
    "Cache-Control": "no-cache",
    "Content-Type": EVENT_STREAM,  # exactly: no charset parameter
}
# The start of every SSE answer, shared by all (each start message gets a copy, since
# middleware may add to it): no header list per idle reader.
_SSE_RAW = [(k.lower().encode(), v.encode()) for k, v in _SSE_HEADERS.items()]
_SSE_BASE64_RAW = [*_SSE_RAW, (b"stream-sse-data-encoding", b"base64")]


class _Asked(NamedTuple):
    """What the answer of a read needs of its request (a parked long-poll keeps just this)."""

    raw: str | None  # the offset as given
    live: str | None
    cursor: str | None
    ttl: dict[str, str]
    if_none_match: str | None


async def _read(
    request: Request,
    state: ApiState,
    source: Source,
    ttl: dict[str, str],
    first: tuple[int, View | None] | None = None,
) -> Response:
    """A GET of `source`; `first` is its page after an offset, already read."""
    raw = _query_offset(request)
    live = request.query_params.get("live")
    if live not in (None, "long-poll", "sse"):
        raise ProtocolError(400, f"live must be long-poll or sse, got {live[:32]!r}")
    if live and raw is None:
        raise ProtocolError(400, "live reads need an offset")
    settings = state.runtime.settings
    after = source.tail if raw == "now" else protocol.parse_offset(raw or "-1")
    client_cursor = request.query_params.get("cursor")
    if live == "sse":
        start = _SSE_RAW if protocol.is_text(source.content_type) else _SSE_BASE64_RAW
        return reads.SSE(start, state.hub, source, after, client_cursor, settings.ds_sse_max_s)
    asked = _Asked(raw, live, client_cursor, ttl, request.headers.get("if-none-match"))
    prefetched = first[1] if first is not None and first[0] == after else None
    view: View | None
    if live == "long-poll":
        if prefetched is None or not (prefetched.messages or prefetched.closed):
            return _LongPoll(state, source, after, asked, prefetched)
        view = prefetched
    elif first is not None and first[0] == after:
        view = prefetched
    else:
        view, _ = await reads.page(state.hub, source, after)
    return _answer_view(source, after, view, asked)


def _answer_view(source: Source, after: int, view: View | None, asked: _Asked) -> Response:
    if view is None:
        return refuse(404, "no such stream")
    headers = {NEXT_OFFSET: protocol.offset(view.last), **asked.ttl}
    if view.at_end:
        headers[UP_TO_DATE] = "true"
        if view.closed:
            headers[CLOSED] = "true"
    if asked.live:
        headers[protocol.CURSOR] = protocol.cursor(asked.cursor)
        if not view.messages:
            return answer(204, {**headers, "Cache-Control": "no-store"})
    if asked.raw == "now" and not asked.live:
        body = protocol.body_of(source.content_type, [])
        return answer(200, {**headers, "Cache-Control": "no-store"}, body, source.content_type)
    etag = f'"{hashlib.sha256(source.hub_key.encode()).hexdigest()[:16]}:{after}:{view.last}'
    etag += ':c"' if view.closed and view.at_end else '"'
    headers["ETag"] = etag
    # A page that ends before the tail never changes; the tail's answer soon will.
    headers["Cache-Control"] = "no-store" if view.at_end else _CACHE_CHUNK
    if asked.if_none_match == etag:
        return answer(304, headers)
    body = protocol.body_of(source.content_type, view.messages)
    return answer(200, headers, body, source.content_type)


class _LongPoll(Response):
    """A long-poll that waits: it hands itself to `AccessLog` (api.server_assumptions.DETACH)
    and waits there once the handler's frames (and the request object) are gone, then
    answers through the middleware's `send` it was called with (so the access log has the
    status and CORS its headers). An idle long-poll holds this object, its subscription,
    `reads.long_poll`'s frames and that `send`."""

    def __init__(
        self, state: ApiState, source: Source, after: int, asked: _Asked, first: View | None
    ) -> None:
        # Not Response.__init__: the answer is made once the wait is over.
        self.background = None
        self._args = (state, source, after, asked, first)
        self._scope: Scope = {}
        self._send: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._scope, self._send = scope, send
        detach = scope.get(DETACH)
        if detach is not None:
            detach(self)  # `serve` runs in AccessLog once the handler returns
            return
        await self.serve(receive, send)

    def abandon(self) -> None:
        """The app failed after detaching: nothing was subscribed yet."""
        self._send = None

    async def serve(self, receive: Receive, _raw_send: Send) -> None:
        state, source, after, asked, first = self._args
        scope, send = self._scope, self._send
        assert send is not None
        self._send = None
        timeout_s = state.runtime.settings.ds_long_poll_s
        try:
            view = await reads.long_poll(state.hub, source, after, timeout_s, receive, first)
            response = _answer_view(source, after, view, asked)
        except Exception as exc:
            response = failed(exc, scope)  # as `api.ds.front` answers `handle`'s errors
        await response(scope, receive, send)


def failed(exc: Exception, scope: Scope) -> Response:
    """The answer to what a /ds/ handler raised: the protocol's own status, a
    `RunRelayError` as on every other route (401, 503), anything else a logged 500."""
    if isinstance(exc, ProtocolError):
        return refuse(exc.status, str(exc))
    if isinstance(exc, RunRelayError):
        return runrelay_error(exc, scope["method"], scope["path"])
    log.error("unhandled error on %s %s", scope["method"], scope["path"], exc_info=exc)
    return error_response(500, "internal_error", "internal server error")


# Read-only runrelay logs ----------------------------------------------------------------
async def _runrelay_log(
    request: Request, state: ApiState, owner: str, kind: str, ident: str
) -> Response:
    if request.method not in ("GET", "HEAD"):
        return refuse(405, "runrelay logs are written by workers", {"Allow": "GET, HEAD"})
    source = await _log_source(state, owner, kind, ident)
    if source is None:
        return refuse(404, f"no {kind[:-1]} {ident}")
    if request.method == "HEAD":
        view = await source.page(source.tail)
        headers = {NEXT_OFFSET: protocol.offset(source.tail), "Cache-Control": "no-store"}
        if view is not None and view.closed:
            headers[CLOSED] = "true"
        return answer(200, headers, content_type=source.content_type)
    return await _read(request, state, source, {})


def _expiry(request: Request) -> tuple[int | None, str | None, int | None]:
    ttl_raw = request.headers.get("stream-ttl")
    exp_raw = request.headers.get("stream-expires-at")
    if ttl_raw is not None and exp_raw is not None:
        raise ProtocolError(400, "Stream-TTL and Stream-Expires-At exclude each other")
    ttl = protocol.decimal(ttl_raw, "Stream-TTL") if ttl_raw is not None else None
    exp_ms = protocol.expires_ms(exp_raw) if exp_raw is not None else None
    return ttl, exp_raw, exp_ms


def _messages(content_type: str, body: bytes, *, allow_empty: bool) -> list[bytes]:
    if not body:
        return []
    if protocol.is_json(content_type):
        return protocol.json_messages(body, allow_empty=allow_empty)
    return [body]


async def _inherited(
    state: ApiState, owner: str, source: str, upto: int, sub: int, json_mode: bool
) -> list[bytes]:
    """The source's messages up to offset `upto`, then `sub` more bytes (or JSON messages)."""
    streams = state.runtime.streams
    extra = (sub if json_mode else 1) if sub else 0
    last = upto + extra
    messages: list[bytes] = []
    after = 0
    while after < last:
        found = await streams.read(owner, source, after, min(reads.CHUNK_MESSAGES, last - after))
        entries = [e for e in found[1] if e.type == MESSAGE] if found else []
        if not entries:
            break
        messages += [e.json for e in entries]
        after = entries[-1].id
    if len(messages) < last:
        raise ProtocolError(400, "Stream-Fork-Sub-Offset is past the source's messages")
    if sub and not json_mode:
        if sub > len(messages[-1]):
            raise ProtocolError(400, "Stream-Fork-Sub-Offset is past the message")
        messages[-1] = messages[-1][:sub]
    return messages


async def _create(request: Request, state: ApiState, owner: str, path: str) -> Response:
    streams = state.runtime.streams
    ttl, exp_raw, exp_ms = _expiry(request)
    closed = request.headers.get("stream-closed", "").lower() == "true"
    fork_of = request.headers.get("stream-forked-from")
    fork_off_raw = request.headers.get("stream-fork-offset")
    sub_raw = request.headers.get("stream-fork-sub-offset")
    given_type = request.headers.get("content-type")
    sub = protocol.decimal(sub_raw, "Stream-Fork-Sub-Offset") if sub_raw is not None else 0
    if sub_raw is not None and fork_of is None:
        raise ProtocolError(400, "Stream-Fork-Sub-Offset belongs to a fork")
    if sub and fork_off_raw is None:
        raise ProtocolError(400, "Stream-Fork-Sub-Offset needs Stream-Fork-Offset")
    body = await body_of(request)
    inherited: list[bytes] = []
    source = ""
    upto = 0
    if fork_of is not None:
        source = _stream_path(fork_of.lstrip("/"))
        src = await streams.info(owner, source)
        if src is None:
            return refuse(404, f"no stream {fork_of} to fork")
        if src.gone:
            return refuse(409, f"{fork_of} is deleted")
        if given_type and media_type(given_type) != media_type(src.config.content_type):
            return refuse(409, "a fork keeps its source's content type")
        given_type = given_type or src.config.content_type
        if ttl is None and exp_ms is None:
            ttl, exp_raw, exp_ms = src.config.ttl_s, src.config.expires_at, src.config.expires_ms
        upto = protocol.parse_offset(fork_off_raw) if fork_off_raw is not None else src.tail
        if upto > src.tail:
            raise ProtocolError(400, "Stream-Fork-Offset is past the source's tail")
    content_type = given_type or DEFAULT_TYPE
    config = StreamConfig(content_type, ttl, exp_raw, exp_ms, source, upto, sub if source else 0)
    messages = _messages(content_type, body, allow_empty=True)
    current = await streams.info(owner, path)
    if current is not None:
        if not current.gone and current.config.key() == config.key():
            return answer(200, _info_headers(current))
        return refuse(409, "a stream with another configuration exists here")
    if source:
        inherited = await _inherited(
            state, owner, source, upto, sub, protocol.is_json(content_type)
        )
        if await streams.retain(owner, source) != "ok":
            return refuse(409, f"{fork_of} went away")
    status, info = await streams.create(owner, path, config, inherited + messages, closed)
    if status != "created":
        if source:
            await streams.release(owner, source)
        if status == "exists":
            return answer(200, _info_headers(info))
        return refuse(409, "a stream with another configuration exists here")
    headers = _info_headers(info)
    headers["Location"] = str(request.url.replace(query=""))
    return answer(201, headers)


def _producer(request: Request) -> Producer | None:
    pid = request.headers.get("producer-id")
    epoch = request.headers.get("producer-epoch")
    seq = request.headers.get("producer-seq")
    given = [h is not None for h in (pid, epoch, seq)]
    if not any(given):
        return None
    if not all(given) or not pid:
        raise ProtocolError(400, "Producer-Id, Producer-Epoch and Producer-Seq go together")
    assert epoch is not None and seq is not None
    return Producer(
        pid, protocol.decimal(epoch, "Producer-Epoch"), protocol.decimal(seq, "Producer-Seq")
    )


async def _append(request: Request, state: ApiState, owner: str, path: str) -> Response:
    close = request.headers.get("stream-closed", "").lower() == "true"
    producer = _producer(request)
    body = await body_of(request)
    content_type = request.headers.get("content-type", "")
    if body and not media_type(content_type):
        raise ProtocolError(400, "an append needs a Content-Type")
    if not body and not close:
        raise ProtocolError(400, "an empty append means nothing")
    messages = _messages(content_type, body, allow_empty=False)
    done = await state.runtime.streams.append(
        owner,
        path,
        content_type,
        messages,
        close=close,
        stream_seq=request.headers.get("stream-seq", ""),
        producer=producer,
    )
    headers = {NEXT_OFFSET: protocol.offset(done.tail)}
    if done.closed:
        headers[CLOSED] = "true"
    if producer is not None and done.status in ("ok", "duplicate"):
        headers["Producer-Epoch"] = str(done.epoch)
        headers["Producer-Seq"] = str(done.seq)
    match done.status:
        case "ok":
            return answer(200 if producer is not None and messages else 204, headers)
        case "duplicate":
            return answer(204, headers)
        case "stale_epoch":
            return refuse(403, "stale producer epoch", {"Producer-Epoch": str(done.epoch)})
        case "gap":
            gap = {
                "Producer-Expected-Seq": str(done.seq),
                "Producer-Received-Seq": str(producer.seq if producer else 0),
            }
            return refuse(409, "producer sequence gap", gap)
        case "epoch_seq":
            return refuse(400, "a new producer epoch starts at Producer-Seq 0")
        case "closed":
            return refuse(409, "the stream is closed", headers)
        case "not_found":
            return refuse(404, "no such stream")
        case "gone":
            return refuse(410, "the stream was deleted")
        case "type_mismatch":
            return refuse(409, "Content-Type differs from the stream's")
        case _:
            return refuse(409, "Stream-Seq must increase")


def _ttl_headers(info: StreamInfo) -> dict[str, str]:
    headers: dict[str, str] = {}
    if info.config.ttl_s is not None:
        headers["Stream-TTL"] = str(info.config.ttl_s)
    if info.config.expires_at is not None:
        headers["Stream-Expires-At"] = info.config.expires_at
    return headers


_ALL = frozenset(["GET", "HEAD", "PUT", "POST", "DELETE"])
_ALLOW = "GET, HEAD, PUT, POST, DELETE, OPTIONS"
_LOG_PATH = re.compile(r"(runs|sessions)/([^/]+)")


async def handle(request: Request, state: ApiState) -> Response:
    """One request below ``/ds/`` (`api.ds.front` sends them here).

    Raises what it refuses (`ProtocolError`; `Unauthorized` before anything is read): the
    caller answers with `failed`.
    """
    method = request.method
    path = request.scope["path"][4:]
    if method == "OPTIONS":
        # CORS preflight: no credentials needed to ask what a browser may send.
        return answer(204, protocol.PREFLIGHT_HEADERS)
    if method not in _ALL:
        return refuse(405, f"{method[:16]} is not a Durable Streams method", {"Allow": _ALLOW})
    owner = state.auth.owner_of(request)
    log = _LOG_PATH.fullmatch(path)
    if log is not None:
        return await _runrelay_log(request, state, owner, log[1], log[2])
    return await _stream(request, state, owner, path)


async def _stream(request: Request, state: ApiState, owner: str, path: str) -> Response:
    """Any other path below /ds/ is one of the caller's Durable Streams."""
    streams = state.runtime.streams
    path = _stream_path(path)
    method = request.method
    if method == "PUT":
        return await _create(request, state, owner, path)
    if method == "POST":
        return await _append(request, state, owner, path)
    if method == "DELETE":
        status = await streams.delete(owner, path)
        codes = {"deleted": 204, "soft": 204, "not_found": 404, "gone": 410}
        return answer(codes[status]) if codes[status] == 204 else refuse(codes[status], status)
    start = _first_read(request) if method == "GET" else None
    first: tuple[int, View | None] | None = None
    if start is None:
        info = await streams.info(owner, path)
    elif start < 0:  # now: the tail is where it starts, and there is nothing after it
        now = await streams.read(owner, path, 0, 0)
        info = now[0] if now is not None else None
        if info is not None and not info.gone:
            first = (info.tail, View([], info.tail, info.tail, info.closed))
    else:
        found = await streams.page(owner, path, start, reads.CHUNK_MESSAGES, reads.CHUNK_BYTES)
        info = found[0] if found is not None else None
        first = (start, _view(found, start))
    if info is None:
        return refuse(404, "no such stream")
    if info.gone:
        return refuse(410, "the stream was deleted")
    if method == "HEAD":
        headers = {**_info_headers(info), **_ttl_headers(info), "Cache-Control": "no-store"}
        return answer(200, headers)
    source = _stream_source(state, owner, path, info)
    return await _read(request, state, source, {}, first)
