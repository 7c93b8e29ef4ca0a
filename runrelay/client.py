"""The async client: runs and resumable event streams over the native API (SPEC §4, §5, §10).

    async with RunRelay("http://127.0.0.1:8000", token="...") as client:
        run = await client.runs.create("story", {"prompt": "a lighthouse"})
        async for event in client.events.stream(run_id=run.run_id):
            if isinstance(event, MessageDelta):
                print(event.data.delta, end="", flush=True)

The stream survives dropped connections, API restarts and stalls: it reconnects
from the last event it yielded, so the caller sees every event exactly once.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self

import httpx
import orjson
from pydantic import BaseModel, ConfigDict

from runrelay.errors import APIConnectionError, EventParseError, StreamError, api_error
from runrelay.events import AnyEvent, StreamGap, parse_event
from runrelay.sse import SSEComment, SSEDecoder, SSEFrame, SSEItem, SSERetry

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})


class Run(BaseModel):
    """A run record. ``create`` returns only what ``POST /v1/runs`` answers; ``get`` has it all."""

    model_config = ConfigDict(frozen=True, extra="allow")

    run_id: str
    session_id: str | None = None
    status: str
    tool: str | None = None
    input: dict[str, Any] | None = None
    attempt: int | None = None
    created_at: str | None = None
    updated_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    last_event_id: int | None = None
    error: str | None = None
    worker: str | None = None
    events_url: str | None = None

    @property
    def terminal(self) -> bool:
        """True once the run is completed, failed or cancelled."""
        return self.status in TERMINAL_STATUSES


def backoff_delay(
    attempt: int, base_s: float, max_s: float, *, rng: random.Random | None = None
) -> float:
    """Full-jitter backoff: uniform in ``[0, min(max_s, base_s * 2**attempt)]``, attempt from 0.

    Full jitter spreads a crowd of clients that lost the same server, so they do
    not all come back in the same instant.
    """
    ceiling = min(max_s, base_s * 2.0 ** min(attempt, 62))
    return (rng or random).uniform(0.0, ceiling)


class _Retryable(Exception):
    """Internal: this connection attempt failed in a way a reconnect may fix."""

    def __init__(self, reason: str, floor_s: float = 0.0) -> None:
        super().__init__(reason)
        self.floor_s = floor_s


class RunRelay:
    """Async client for a runrelay API. Use as ``async with`` or call :meth:`aclose`.

    ``stale_after``: seconds of silence (not even a heartbeat) after which a stream
    connection is treated as dead and resumed. ``max_retries``: consecutive failed
    attempts before a request raises or a stream gives up with :class:`StreamError`.
    ``transport``: an ``httpx.AsyncBaseTransport`` to use instead of the network.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        stale_after: float = 45.0,
        max_retries: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if stale_after <= 0 or max_retries < 0 or backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("stale_after must be > 0; retries and backoff must be >= 0")
        headers = {"User-Agent": "runrelay-python"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.timeout = timeout
        self.stale_after = stale_after
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.runs = Runs(self)
        self.events = Events(self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def status(self) -> dict[str, Any]:
        """``GET /v1/status``: queue depths, workers and runs by status."""
        body = await self.request("GET", "/v1/status")
        return body if isinstance(body, dict) else {"status": body}

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one API request and return its decoded JSON; raises typed errors.

        Transport errors, 429 and 5xx are retried with backoff. Callers only send
        requests that are safe to repeat (GETs, idempotent cancels, keyed creates).
        """
        failures = 0
        while True:
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, headers=headers
                )
            except httpx.TransportError as exc:
                if failures >= self.max_retries:
                    raise APIConnectionError(f"{method} {path}: {exc!r}") from exc
                floor = 0.0
            else:
                if response.status_code < 400:
                    return orjson.loads(response.content) if response.content else None
                error = api_error(response.status_code, response.content)
                if not _retryable_status(response.status_code) or failures >= self.max_retries:
                    raise error
                floor = _retry_after_s(response)
            await asyncio.sleep(max(floor, self._backoff(failures)))
            failures += 1

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, self.backoff_base_s, self.backoff_max_s)


class Runs:
    """``client.runs``: create, inspect, list and cancel runs."""

    def __init__(self, client: RunRelay) -> None:
        self._client = client

    async def create(
        self,
        tool: str,
        input: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Start a run of ``tool``; returns at once (status ``queued``).

        Without ``idempotency_key`` one is generated per call, so a retried request
        after a dropped connection can never start a second run.
        """
        body: dict[str, Any] = {"tool": tool, "input": dict(input or {})}
        if session_id is not None:
            body["session_id"] = session_id
        key = idempotency_key or f"sdk-{uuid.uuid4().hex}"
        data = await self._client.request(
            "POST", "/v1/runs", json=body, headers={"Idempotency-Key": key}
        )
        return Run.model_validate(data)

    async def get(self, run_id: str) -> Run:
        """The run record; :class:`NotFoundError` if unknown or not yours."""
        return Run.model_validate(await self._client.request("GET", f"/v1/runs/{run_id}"))

    async def list(
        self, session_id: str | None = None, status: str | None = None, limit: int = 50
    ) -> list[Run]:
        """Your runs, newest first, optionally filtered by session and status."""
        params: dict[str, str | int] = {"limit": limit}
        if session_id is not None:
            params["session_id"] = session_id
        if status is not None:
            params["status"] = status
        data = await self._client.request("GET", "/v1/runs", params=params)
        if isinstance(data, dict):
            # Accept a wrapped page as well as a bare list; SPEC §4 does not fix the shape.
            data = next((data[k] for k in ("runs", "items", "data") if k in data), [])
        return [Run.model_validate(item) for item in data]

    async def cancel(self, run_id: str) -> Run:
        """Ask the run to stop; idempotent. Returns the run record (maybe not yet cancelled)."""
        return Run.model_validate(await self._client.request("POST", f"/v1/runs/{run_id}/cancel"))


class Events:
    """``client.events``: resumable event streams."""

    def __init__(self, client: RunRelay) -> None:
        self._client = client

    async def stream(
        self,
        *,
        run_id: str | None = None,
        session_id: str | None = None,
        since_id: int | None = None,
    ) -> AsyncGenerator[AnyEvent, None]:
        """Yield the events after ``since_id`` (all when None), then live ones.

        A run stream ends after the terminal event (or at once if the run already
        ended before ``since_id``); a session stream runs until you stop iterating.
        Reconnects transparently; raises :class:`NotFoundError`, :class:`AuthError`
        or :class:`BadRequestError` at once, :class:`StreamError` when retries run out.
        To stop early, ``break`` inside ``async with contextlib.aclosing(...)``.
        """
        if (run_id is None) == (session_id is None):
            raise ValueError("pass exactly one of run_id= or session_id=")
        path = f"/v1/runs/{run_id}/events" if run_id else f"/v1/sessions/{session_id}/events"
        place = _Place(since_id)
        while True:
            place.alive = False
            try:
                connection = self._connect_once(path, place, until_terminal=run_id is not None)
                async with aclosing(connection) as events:
                    async for event in events:
                        yield event
                return
            except (httpx.TransportError, _Retryable, EventParseError) as exc:
                await self._pause(path, place, exc)

    async def _connect_once(
        self, path: str, place: _Place, *, until_terminal: bool
    ) -> AsyncGenerator[AnyEvent, None]:
        """One connection from ``place``: its new events until the stream is over (it
        returns) or the connection is lost (it raises what `stream` reconnects on)."""
        client = self._client
        async with client._http.stream(
            "GET",
            path,
            headers=_stream_headers(place.cursor),
            timeout=httpx.Timeout(client.timeout, read=None),
        ) as response:
            if response.status_code == 204:
                return  # nothing after the cursor, and the run has ended
            if response.status_code >= 400:
                await _raise_for_status(response)
            async with aclosing(_items(response, client.stale_after)) as items:
                async for item in items:
                    event = place.new_event(item)
                    if event is None:
                        continue
                    yield event
                    place.delivered(event)
                    if until_terminal and event.is_terminal:
                        return
            raise _Retryable("the server closed the stream")

    async def _pause(self, path: str, place: _Place, exc: Exception) -> None:
        """Wait before the next connection; `StreamError` once retries ran out."""
        client = self._client
        if place.failures >= client.max_retries:
            raise StreamError(
                f"stream {path} lost after {place.failures + 1} attempts: {exc}", place.cursor
            ) from exc
        floor = exc.floor_s if isinstance(exc, _Retryable) else 0.0
        # A live connection closed by the server (it caps connection age) is routine:
        # come back after the server's retry delay, no more.
        delay = 0.0 if place.alive else client._backoff(place.failures)
        await asyncio.sleep(max(floor, place.retry_floor_s, delay))
        if not place.alive:
            place.failures += 1


@dataclass(slots=True)
class _Place:
    """Where a stream is across its connections, and how its reconnects back off."""

    cursor: int | None  # the id of the last event delivered
    failures: int = 0  # consecutive connections that delivered nothing
    retry_floor_s: float = 0.0  # the server's ``retry:``
    alive: bool = False  # the current connection delivered an event or a heartbeat

    def new_event(self, item: SSEItem) -> AnyEvent | None:
        """The event `item` carries if it was not delivered yet; None for anything else."""
        if isinstance(item, SSERetry):
            self.retry_floor_s = item.ms / 1000
            return None
        if isinstance(item, SSEComment):
            # Heartbeats are proof of life, not something to deliver.
            self.alive, self.failures = True, 0
            return None
        if item.event == "error" and item.id is None:
            # The server lost a backend mid-stream; it closes next. Not an event of the
            # run: reconnect, and say why if retries run out.
            raise _Retryable(f"server error: {_error_message(item)}")
        event = _event(item)
        if event.id is not None and self.cursor is not None and event.id <= self.cursor:
            return None  # already delivered before a reconnect
        return event

    def delivered(self, event: AnyEvent) -> None:
        if event.id is not None:
            self.cursor = event.id
        if not isinstance(event, StreamGap):
            self.alive, self.failures = True, 0


async def _raise_for_status(response: httpx.Response) -> NoReturn:
    """Raise for an error answer: `_Retryable` for 429 and 5xx, else the API's error."""
    body = await response.aread()
    error = api_error(response.status_code, body)
    if _retryable_status(response.status_code):
        raise _Retryable(str(error), _retry_after_s(response))
    raise error


async def _items(response: httpx.Response, stale_after: float) -> AsyncGenerator[SSEItem, None]:
    """The decoded items of one response; raises _Retryable after ``stale_after`` of silence."""
    decoder = SSEDecoder()
    chunks = response.aiter_bytes().__aiter__()
    while True:
        try:
            # The watchdog wraps only the read: time the caller spends between
            # events is not silence on the wire.
            async with asyncio.timeout(stale_after):
                chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise _Retryable(f"no data for {stale_after}s") from None
        for item in decoder.feed(chunk):
            yield item


def _error_message(frame: SSEFrame) -> str:
    try:
        message = orjson.loads(frame.data).get("message")
    except (orjson.JSONDecodeError, AttributeError):
        message = None
    return str(message or frame.data)


def _event(frame: SSEFrame) -> AnyEvent:
    stream_id: int | None = None
    if frame.id is not None:
        try:
            stream_id = int(frame.id)
        except ValueError as exc:
            raise EventParseError(f"non-integer event id {frame.id!r}") from exc
    return parse_event(frame.event, frame.data, stream_id=stream_id)


def _stream_headers(cursor: int | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
    if cursor is not None:
        headers["Last-Event-ID"] = str(cursor)
    return headers


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return 0.0
