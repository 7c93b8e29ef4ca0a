"""The stores on Redis: the connection they share, and the event log on Redis Streams.

With `shared.eventlog.redis_records` (run records, schedule, workers), the only
modules that import redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from shared.errors import AppendRefused, BackendUnavailable, Conflict, NotFound, RunRelayError
from shared.eventlog import scripts
from shared.eventlog.base import Batch, Transition
from shared.keys import Keys
from shared.models import Page, StoredEvent, utcnow

# Commands on the shared pool must fail fast when Redis is gone; blocking reads get
# their own pool with a timeout longer than any block they issue.
_COMMAND_TIMEOUT_S = 5.0
_INDEX_CACHE = 100_000

# Everything the client library or its transport raises while Redis is away, failing
# over or restarting. redis-py raises its own ConnectionError/TimeoutError for most of
# them, but not all: a write on a transport that uvloop has closed raises RuntimeError
# ("unable to perform operation on <TCPTransport closed=True>"), a reset mid-read can
# surface as a bare OSError or EOFError, and a node that is loading, read-only (a
# demoted master) or without a quorum answers with an error reply (ResponseError).
# Every one of them becomes `BackendUnavailable` here, so no caller ever mistakes a
# backend blip for a bad request or a tool's failure.
BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, EOFError, RuntimeError)


def _seq(stream_id: bytes | str) -> int:
    if isinstance(stream_id, bytes):
        return int(stream_id.partition(b"-")[2])
    return int(stream_id.partition("-")[2])


def _raw(response: Any, **_: Any) -> Any:
    return response


def _flat_events(entries: list[Any]) -> list[StoredEvent]:
    """Entries as Redis sends them: [id, [k, v, k, v]]; every writer here puts "t" first."""
    out = []
    for eid, kv in entries:
        if len(kv) == 4 and kv[0] == b"t":
            out.append(StoredEvent(int(eid.partition(b"-")[2]), kv[1].decode(), kv[3]))
            continue
        fields = dict(zip(kv[::2], kv[1::2], strict=True))
        out.append(StoredEvent(_seq(eid), fields[b"t"].decode(), fields[b"d"]))
    return out


def flat_pairs(mapping: Mapping[str, str]) -> list[str]:
    flat: list[str] = []
    for key, value in mapping.items():
        flat += [key, value]
    return flat


def decoded(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class _ChangeFeed:
    """Which followed logs have news, from the PUBLISH every append makes on its log's key.

    One XREAD BLOCK over every followed log re-sends (and Redis re-scans) all their keys
    on every call: with 1,000 followed runs that was 40% of an API process's time at
    5,000 events/s. Instead one pub/sub connection subscribes to the followed keys, and
    only logs that were published to are read (plain XREAD, no BLOCK). A key counts as
    followed once Redis confirms its subscription; it is read then, so nothing appended
    before the subscription is missed. A sweep over all keys every `SWEEP_S` bounds the
    damage of a notification lost any other way. Used by one task at a time (`busy`).
    """

    SWEEP_S = 5.0

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._pubsub: Any = None
        self._subscribed: set[str] = set()
        self._dirty: set[str] = set()
        self._swept = 0.0
        self.busy = False

    async def reset(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._subscribed.clear()
        self._dirty.clear()
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def more(self, keys: Iterable[str]) -> None:
        """Logs whose read was cut at `count`: read them again without waiting."""
        self._dirty.update(keys)

    async def ready(self, cursors: Mapping[str, int], timeout_s: float) -> set[str]:
        """Keys of `cursors` with (possibly) new entries; empty after `timeout_s` of quiet."""
        self.busy = True
        try:
            return await self._ready(cursors, timeout_s)
        finally:
            self.busy = False

    async def _ready(self, cursors: Mapping[str, int], timeout_s: float) -> set[str]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub()
            self._swept = now
        new = [k for k in cursors if k not in self._subscribed]
        gone = [k for k in self._subscribed if k not in cursors]
        if new:
            await self._pubsub.subscribe(*new)
            self._subscribed.update(new)
        if gone:
            await self._pubsub.unsubscribe(*gone)
            self._subscribed.difference_update(gone)
            self._dirty.difference_update(gone)
        if now - self._swept >= self.SWEEP_S:
            self._swept = now
            self._dirty.update(cursors)
        deadline = now + timeout_s
        while not self._dirty:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            message = await self._pubsub.get_message(timeout=remaining)
            while message is not None:
                if message["type"] in ("message", "subscribe"):
                    key = message["channel"].decode()
                    if key in cursors:
                        self._dirty.add(key)
                message = await self._pubsub.get_message(timeout=0)
        ready, self._dirty = self._dirty, set()
        return ready


class RedisConnection:
    """What the four Redis stores share: the pools, the key names, the run -> session index
    cache, and the one translation of client-library errors into `BackendUnavailable`.

    A fixed handful of connections however many readers there are: `max_connections`
    for commands, one pub/sub connection (the change feed) and one more only while a
    second task blocks in `wait` — 8 in all by default.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        max_connections: int = 6,
        client_name: str | None = None,
    ) -> None:
        self.keys = Keys(prefix)
        self.url = url
        self.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=_COMMAND_TIMEOUT_S,
                socket_timeout=_COMMAND_TIMEOUT_S,
                socket_connect_timeout=_COMMAND_TIMEOUT_S,
                client_name=client_name,
            )
        )
        self.blocking = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=2,
                timeout=None,
                socket_timeout=None,
                socket_connect_timeout=_COMMAND_TIMEOUT_S,
                client_name=client_name,
            )
        )
        # run id -> session id never changes once written, so caching it is always safe.
        self._sessions: OrderedDict[str, str] = OrderedDict()

    def unavailable(self, exc: Exception) -> BackendUnavailable:
        host = self.url.rpartition("@")[2]
        return BackendUnavailable(f"Redis at {host} is unavailable: {type(exc).__name__}: {exc}")

    async def call(self, coro: Any) -> Any:
        """Await one Redis call; every backend error comes out as `BackendUnavailable`."""
        try:
            return await coro
        except BACKEND_ERRORS as exc:
            raise self.unavailable(exc) from exc

    async def session_of(self, run_id: str) -> str | None:
        session_id = self._sessions.get(run_id)
        if session_id is not None:
            self._sessions.move_to_end(run_id)
            return session_id
        raw = await self.call(self.redis.get(self.keys.run_index(run_id)))
        if raw is None:
            return None
        session_id = str(raw.decode())
        self._sessions[run_id] = session_id
        if len(self._sessions) > _INDEX_CACHE:
            self._sessions.popitem(last=False)
        return session_id

    def run_keys(self, owner: str, session_id: str, run_id: str) -> list[str]:
        """The keys one run's scripts touch: all in the session's slot."""
        k = self.keys
        return [
            k.run(session_id, run_id),
            k.run_log(session_id, run_id),
            k.session(session_id, owner),
            k.session_log(session_id, owner),
            k.session_runs(session_id, owner),
        ]

    async def close(self) -> None:
        await self.redis.aclose()
        await self.blocking.aclose()


class RedisEventLog:
    """`EventLog` on Redis (see `RedisConnection` for the connections it holds)."""

    def __init__(self, conn: RedisConnection, *, ttl_s: int, max_events: int) -> None:
        self.conn = conn
        self.keys = conn.keys
        self._ttl_s = ttl_s
        self._max_events = max_events
        self._redis = conn.redis
        self._blocking = conn.blocking
        self._call = conn.call
        self._create = self._redis.register_script(scripts.CREATE)
        self._append = self._redis.register_script(scripts.APPEND)
        # Pages are read with plain XRANGE in MULTI (a Lua script would copy every entry
        # into Lua tables and back: 4x slower in Redis for a 500-event page), and parsed
        # by `_flat_events` rather than redis-py's per-entry dicts.
        self._redis.set_response_callback("XRANGE", _raw)
        self._redis.set_response_callback("XREVRANGE", _raw)
        for client in (self._redis, self._blocking):
            client.set_response_callback("XREAD", _raw)
        self._feed = _ChangeFeed(self._blocking)
        self._append_topic = self._redis.register_script(scripts.APPEND_TOPIC)

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._feed.reset()
        await self.conn.close()

    # Runs ---------------------------------------------------------------------------
    async def create_run(
        self, fields: Mapping[str, str], first_type: str, first_body: bytes
    ) -> None:
        run_id, session_id, owner = fields["run_id"], fields["session_id"], fields["owner"]
        # The index is written first: a crash before the script leaves a harmless
        # pointer to nothing, never a run nobody can find.
        await self._call(self._redis.set(self.keys.run_index(run_id), session_id))
        score = time.time()
        result = await self._call(
            self._create(
                keys=self.conn.run_keys(owner, session_id, run_id),
                args=[
                    owner,
                    run_id,
                    score,
                    first_type,
                    first_body,
                    self._max_events,
                    len(fields),
                    *flat_pairs(fields),
                ],
            )
        )
        if result == b"exists":
            raise Conflict(f"run {run_id} already exists")
        await self._call(
            self._redis.zadd(self.keys.owner_runs(owner), {f"{session_id}/{run_id}": score})
        )

    def _rule_args(self, rule: Transition) -> list[Any]:
        allowed = "," + ",".join(sorted(rule.allowed_from)) + "," if rule.allowed_from else ""
        return [
            rule.to or "",
            "1" if rule.terminal else "0",
            allowed,
            rule.fields.get("updated_at") or utcnow(),
            self._ttl_s,
            self._max_events,
            len(rule.expect),
            *flat_pairs(rule.expect),
            len(rule.fields),
            *flat_pairs(rule.fields),
        ]

    async def append(
        self, owner: str, session_id: str, run_id: str, type_: str, body: bytes, rule: Transition
    ) -> int:
        [result] = await self.append_batches(
            [Batch(owner, session_id, run_id, ((type_, body),), rule)]
        )
        if isinstance(result, RunRelayError):
            raise result
        return result

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | RunRelayError]:
        """One pipelined round trip of APPEND calls (not a MULTI: each call is atomic on
        its own, and every key of one call shares its session's hash tag, so on a cluster
        a pipeline splits by slot without splitting any call)."""
        calls = []
        for b in batches:
            events = [part for event in b.events for part in event]
            keys = self.conn.run_keys(b.owner, b.session_id, b.run_id)
            calls.append(("EVALSHA", self._append.sha, 5, *keys, *self._rule_args(b.rule), *events))
        replies = await self._pipelined(calls)
        out: list[int | RunRelayError] = []
        expire = []
        for b, reply in zip(batches, replies, strict=True):
            if isinstance(reply, Exception):
                out.append(self.conn.unavailable(reply))
                continue
            event_id, status = int(reply[0]), reply[1].decode()
            if event_id > 0:
                out.append(event_id)
                if b.rule.terminal:
                    expire.append(b.run_id)
            elif not status:
                out.append(NotFound(f"run {b.run_id} not found"))
            else:
                out.append(AppendRefused(b.run_id, status, b.events[0][0]))
        if expire:
            async with self._redis.pipeline(transaction=False) as pipe:
                for run_id in expire:
                    pipe.expire(self.keys.run_index(run_id), self._ttl_s)
                await self._call(pipe.execute())
        return out

    async def _pipelined(self, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Replies (or the error of each call) to `calls` sent in one pipeline; a script
        Redis no longer has (a restart, SCRIPT FLUSH) is loaded and its calls resent."""

        async def send(batch: list[tuple[Any, ...]]) -> list[Any]:
            async with self._redis.pipeline(transaction=False) as pipe:
                for call in batch:
                    pipe.execute_command(*call)
                replies: list[Any] = await self._call(pipe.execute(raise_on_error=False))
                return replies

        replies = await send(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            await self._call(self._redis.script_load(scripts.APPEND))
            for i, reply in zip(missing, await send([calls[i] for i in missing]), strict=True):
                replies[i] = reply
        return replies

    # Reading ------------------------------------------------------------------------
    async def read(self, log_key: str, after: int, limit: int) -> Page:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xrange(log_key, f"(0-{after}", "+", count=limit)
            pipe.xrange(log_key, "-", "+", count=1)
            pipe.xrevrange(log_key, "+", "-", count=1)
            entries, first, last = await self._call(pipe.execute())
        return Page(
            _flat_events(entries),
            _seq(first[0][0]) if first else 0,
            _seq(last[0][0]) if last else 0,
        )

    async def wait(
        self, cursors: Mapping[str, int], timeout_s: float, count: int
    ) -> dict[str, list[StoredEvent]]:
        if not cursors:
            return {}
        if self._feed.busy:
            # Another task holds the change feed (one long-lived reader per process, the
            # API's tail hub, normally does): this caller blocks on XREAD as before.
            return await self._xread(self._blocking, cursors, count, timeout_s)
        try:
            ready = await self._feed.ready(cursors, timeout_s)
        except BACKEND_ERRORS as exc:
            await self._feed.reset()
            raise self.conn.unavailable(exc) from exc
        if not ready:
            return {}
        found = await self._xread(self._redis, {k: cursors[k] for k in ready}, count, None)
        self._feed.more(k for k, events in found.items() if len(events) >= count)
        return found

    async def _xread(
        self,
        client: aioredis.Redis,
        cursors: Mapping[str, int],
        count: int,
        timeout_s: float | None,
    ) -> dict[str, list[StoredEvent]]:
        streams: dict[Any, Any] = {key: f"0-{cursor}" for key, cursor in cursors.items()}
        block = None if timeout_s is None else max(1, int(timeout_s * 1000))
        try:
            reply: Any = await client.xread(streams, count=count, block=block)
        except BACKEND_ERRORS as exc:
            raise self.conn.unavailable(exc) from exc
        # RESP3 answers a map, RESP2 a list of [key, entries].
        pairs = reply.items() if isinstance(reply, dict) else reply or []
        return {key.decode(): _flat_events(entries) for key, entries in pairs}

    async def wake(self, wake_key: str) -> None:
        # The change feed hears the PUBLISH; a plain blocking XREAD (see `wait`) the XADD.
        # Ids 0-1, 0-2, ...: like a log's, so a reader's integer cursor passes each wake once
        # (an auto id would always be past "0-N" and make every wait return at once).
        # Same fields as an event ("t", "d"): `wait` decodes every stream it reads alike.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.publish(wake_key, b"0")
            pipe.xadd(wake_key, {"t": "wake", "d": b"{}"}, id="0-*", maxlen=1)
            pipe.expire(wake_key, 3600)
            await self._call(pipe.execute())

    # Topics -------------------------------------------------------------------------
    async def append_topic(self, owner: str, topic: str, type_: str, body: bytes) -> int:
        result = await self._call(
            self._append_topic(
                keys=[self.keys.topic(owner, topic), self.keys.topic_log(owner, topic)],
                args=[type_, body, self._ttl_s, self._max_events],
            )
        )
        return int(result)
