"""The stores on Redis: the connection they share, and the event log on Redis Streams.

With `shared.eventlog.redis_records` (run records, schedule, workers), the only
modules that import redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from shared.errors import AppendRefused, BackendUnavailable, Conflict, NotFound, RunRelayError
from shared.eventlog import scripts
from shared.eventlog.base import Batch, Cursors, Transition
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
BACKEND_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,  # no node serves the slot (yet), mid-failover
    OSError,
    EOFError,
    RuntimeError,
)


class _ResetAware(AbstractConnection):
    """A connection that connects afresh when its transport was closed under it.

    A connection reset while it sat in the pool (a proxy's or a failover's RST) leaves
    no EOF to see, and redis-py 8's pool skips its own "is it dirty" check when
    maintenance notifications are on (RESP3's default): the first command after an
    outage then met uvloop's "unable to perform operation on <TCPTransport
    closed=True>" and answered 503 although Redis was back. The pool connects every
    connection it hands out (a no-op when connected); this one notices the closed
    transport there."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        writer = self._writer
        if writer is not None and writer.transport.is_closing():
            await self.disconnect()
        await super().connect_check_health(
            check_health=check_health, retry_socket_connect=retry_socket_connect
        )


class _Tcp(_ResetAware, Connection):
    pass


class _Tls(_ResetAware, SSLConnection):
    pass


class _Unix(_ResetAware, UnixDomainSocketConnection):
    pass


def _connection_class(url: str) -> type[AbstractConnection]:
    """The reset-aware version of the connection class `url`'s scheme asks for."""
    chosen = parse_url(url).get("connection_class")
    if chosen is SSLConnection:
        return _Tls
    if chosen is UnixDomainSocketConnection:
        return _Unix
    return _Tcp


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


_POLL_S = 0.05


def _streams(cursors: Mapping[str, int]) -> dict[Any, Any]:
    return {key: f"0-{cursor}" for key, cursor in cursors.items()}


def _pairs_of(reply: Any) -> dict[str, list[StoredEvent]]:
    # RESP3 answers a map, RESP2 a list of [key, entries].
    pairs = reply.items() if isinstance(reply, dict) else reply or []
    return {key.decode(): _flat_events(entries) for key, entries in pairs}


def decoded(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``redis+cluster://[user:password@]h1:p1,h2:p2[/...]`` → (seed nodes, user, password)."""
    rest = url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    userinfo, _, hosts = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    nodes = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        nodes.append((host or "127.0.0.1", int(port or 6379)))
    return nodes, unquote(user) or None, unquote(password) or None


def is_cluster_url(url: str) -> bool:
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


class _Shard:
    """One node's pub/sub connection of the change feed, and the task reading it."""

    def __init__(self, client: Any, pubsub: Any, owns_client: bool) -> None:
        self.client = client
        self.pubsub = pubsub
        self.owns_client = owns_client
        self.keys: set[str] = set()
        self.task: asyncio.Task[None] | None = None

    async def send(self, commands: Iterable[tuple[str, ...]]) -> None:
        """Send (un)subscribe commands in one write, on the connection `read` reads.

        Not through redis-py's pub/sub calls: each send and each read there is wrapped
        in its retry and its metrics (a connect wave of 2,000 new logs made 4,000 such
        calls), and a silent reconnect would not subscribe our keys again. A broken
        connection raises instead, and the feed starts over."""
        await self.pubsub.connect()
        packed = [hiredis.pack_command(command) for command in commands]  # type: ignore[arg-type]
        await self.pubsub.connection.send_packed_command(packed, check_health=False)

    async def read(self) -> Any:
        """The next message or subscription confirmation (a push reply, under RESP3)."""
        return await self.pubsub.connection.read_response(
            timeout=math.inf, disconnect_on_error=False, push_request=True
        )

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        with contextlib.suppress(Exception):
            await self.pubsub.aclose()
        if self.owns_client:
            with contextlib.suppress(Exception):
                await self.client.aclose()


class _ChangeFeed:
    """Which followed logs have news, from the SPUBLISH every append makes on its log's key.

    One XREAD BLOCK over every followed log re-sends (and Redis re-scans) all their keys
    on every call: with 1,000 followed runs that was 40% of an API process's time at
    5,000 events/s. Instead one pub/sub connection per Redis node subscribes (sharded
    pub/sub: SSUBSCRIBE, so on a Cluster the news of a log goes only to the node that
    holds it) to the followed keys, and only logs that were published to are read
    (plain XREAD, no BLOCK). A key counts as followed once Redis confirms its
    subscription; it is read then, so nothing appended before the subscription is
    missed. A key whose slot moved to another node is subscribed again there. A sweep
    over all keys every `SWEEP_S` bounds the damage of a notification lost any other
    way (a slot move included). Used by one task at a time (`busy`); each shard's
    messages are read by a task of its own, so waiting on several nodes costs nothing.
    A wake of that task's own wake key (`interrupt`) ends its wait here, with no round
    trip: a connect wave wakes the hub's read for every pass that adds logs.
    """

    SWEEP_S = 5.0

    def __init__(self, conn: RedisConnection) -> None:
        self._conn = conn
        self._shards: dict[str, _Shard] = {}
        self._node_of_key: dict[str, str] = {}
        self._dirty: set[str] = set()
        self._news = asyncio.Event()
        self._error: BaseException | None = None
        self._swept = 0.0
        self.busy = False
        # The keys of the wait in progress (or the last one), and whether `interrupt` asked
        # it to return: a local wake needs no round trip through Redis.
        self._waiting: Mapping[str, int] = {}
        self._interrupted = False
        # The `Cursors.seq` of the last wait whose keys the subscriptions match (None: a
        # plain mapping's, or none since a reset).
        self._synced: int | None = None

    async def reset(self) -> None:
        shards, self._shards = list(self._shards.values()), {}
        self._waiting = {}
        self._synced = None
        self._node_of_key.clear()
        self._dirty.clear()
        self._error = None
        self._swept = 0.0
        for shard in shards:
            await shard.close()

    def interrupt(self, key: str) -> bool:
        """Make the wait in progress return now if it includes `key` (a wake key); False:
        the waiter is not ours (`RedisEventLog.wake` wakes it through Redis).

        Between two waits of that waiter, its next one returns at once: a wake is kept
        until a wait returns on it, as the wake log's entry is on the other path."""
        if key not in self._waiting:
            return False
        self._interrupted = True
        self._news.set()
        return True

    def more(self, keys: Iterable[str]) -> None:
        """Logs whose read was cut at `count`: read them again without waiting."""
        self._dirty.update(keys)

    async def ready(self, cursors: Mapping[str, int], timeout_s: float) -> set[str]:
        """Keys of `cursors` with (possibly) new entries; empty after `timeout_s` of quiet."""
        self.busy = True
        self._waiting = cursors
        try:
            return await self._ready(cursors, timeout_s)
        finally:
            self.busy = False

    async def _ready(self, cursors: Mapping[str, int], timeout_s: float) -> set[str]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._swept == 0.0:
            self._swept = now
        sweep = now - self._swept >= self.SWEEP_S
        await self._follow(cursors, recheck=sweep)
        if sweep:
            self._swept = now
            self._dirty.update(cursors)
        deadline = now + timeout_s
        while not self._dirty and self._error is None and not self._interrupted:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._news.wait()
        self._interrupted = False
        if self._error is not None:
            raise self._error
        ready, self._dirty = self._dirty & cursors.keys(), set()  # O(dirty), not O(followed)
        return ready

    async def _follow(self, cursors: Mapping[str, int], *, recheck: bool) -> None:
        """Subscribe the new keys (on their node), unsubscribe the gone ones; with `recheck`,
        move the keys whose slot moved to another node since."""
        by_node: dict[str, list[str]] = {}
        if self._conn.cluster:
            # Its slot map (a no-op once loaded): a first command may be this wait's.
            await self._conn.redis.initialize()
        known_keys = self._node_of_key.keys()
        hint = cursors if isinstance(cursors, Cursors) else None
        fresh: Collection[str]
        gone: Collection[str]
        if hint is not None and not recheck and hint.since == self._synced:
            # What changed since the wait this feed saw last: O(changes), where comparing
            # every followed key made each of a connect wave's hundreds of reads O(followed).
            fresh = [key for key in hint.added if key not in known_keys]
            # Followed again while still subscribed: no confirmation will have them read.
            self._dirty.update(key for key in hint.added if key in known_keys)
            gone = [key for key in hint.removed if key in known_keys and key not in cursors]
        else:
            # Set operations on the key views, in C (a Python loop over 2,000 keys per read
            # slowed connect storms).
            fresh = cursors.keys() if recheck else cursors.keys() - known_keys
            # Known keys no longer followed: as many as |known| - (|followed| - |fresh|),
            # so none when the counts add up (only keys were added): no second pass.
            # (With `recheck` fresh is every followed key: the pass runs if any is known.)
            counts_add_up = len(known_keys) + len(fresh) == len(cursors)
            gone = () if counts_add_up else known_keys - cursors.keys()
            if hint is not None:
                # A wait of its reader's this feed did not see: which logs it began to
                # follow again is unknown, so every one is read once.
                self._dirty.update(cursors)
        for key in fresh:
            known = self._node_of_key.get(key)
            node = self._conn.node_of(key)
            if known != node:
                by_node.setdefault(node, []).append(key)
        moved = [k for keys in by_node.values() for k in keys if k in self._node_of_key]
        leaving: dict[str, list[str]] = {}
        for key in [*gone, *moved]:
            node = self._node_of_key.pop(key)
            shard = self._shards.get(node)
            if shard is not None and key in shard.keys:
                shard.keys.discard(key)
                leaving.setdefault(node, []).append(key)
        for node, left in leaving.items():
            shard = self._shards[node]
            if not shard.keys:
                # Nothing followed on that node: its connection and task go too.
                del self._shards[node]
                await shard.close()
            else:
                await shard.send(("SUNSUBSCRIBE", key) for key in left)
        for node, keys in by_node.items():
            shard = self._shards.get(node)
            if shard is None:
                shard = self._shards[node] = self._conn.new_shard(node)
            # One SSUBSCRIBE per slot: its channels must share one (CROSSSLOT otherwise).
            by_slot: dict[int, list[str]] = {}
            for key in keys:
                by_slot.setdefault(self._conn.slot_of(key), []).append(key)
            await shard.send(("SSUBSCRIBE", *group) for group in by_slot.values())
            shard.keys.update(keys)
            self._node_of_key.update(dict.fromkeys(keys, node))
            if shard.task is None:
                shard.task = asyncio.create_task(self._read(shard), name=f"change feed {node}")
        self._synced = hint.seq if hint is not None else None

    async def _read(self, shard: _Shard) -> None:
        try:
            while True:
                message = await shard.read()
                kind = message[0] if isinstance(message, list) and message else None
                if kind in (b"smessage", b"ssubscribe"):
                    self._dirty.add(message[1].decode())
                    self._news.set()
        except asyncio.CancelledError:
            raise
        except BACKEND_ERRORS as exc:
            self._error = exc
            self._news.set()


class RedisConnection:
    """What the four Redis stores share: the client, the key names, the run -> session index
    cache, and the one translation of client-library errors into `BackendUnavailable`.

    One node (``redis://``) or a Redis Cluster (``redis+cluster://h1:p1,h2:p2``, redis-py's
    asyncio `RedisCluster`). A fixed handful of connections however many readers there
    are: at most `max_connections` commands in flight (so at most that many connections
    to any node), one pub/sub connection per node (the change feed) and, on one node,
    one more only while a second task blocks in `wait` — 8 in all by default.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        max_connections: int = 6,
        client_name: str | None = None,
        min_replicas: int = 0,
        min_replicas_timeout_ms: int = 1000,
    ) -> None:
        self.keys = Keys(prefix)
        self.url = url
        self.cluster = is_cluster_url(url)
        self.min_replicas = min_replicas
        self.min_replicas_timeout_ms = min_replicas_timeout_ms
        self._client_name = client_name
        self._slots = asyncio.Semaphore(max_connections)
        self.redis: Any
        if self.cluster:
            nodes, self._user, self._password = cluster_nodes(url)
            self.redis = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                username=self._user,
                password=self._password,
                # Bounded by `_slots` instead: a full node pool would raise, not wait.
                max_connections=max_connections + 2,
                socket_timeout=_COMMAND_TIMEOUT_S,
                socket_connect_timeout=_COMMAND_TIMEOUT_S,
                client_name=client_name,
                # Never resend a command after a connection error: an append whose reply
                # was lost may have been applied, and a second one would duplicate the
                # event. MOVED/ASK redirects are followed all the same.
                retry=Retry(NoBackoff(), 0),
            )
            self.blocking = None
        else:
            self.redis = aioredis.Redis(
                connection_pool=aioredis.BlockingConnectionPool.from_url(
                    url,
                    connection_class=_connection_class(url),
                    max_connections=max_connections,
                    timeout=_COMMAND_TIMEOUT_S,
                    socket_timeout=_COMMAND_TIMEOUT_S,
                    socket_connect_timeout=_COMMAND_TIMEOUT_S,
                    client_name=client_name,
                )
            )
            # RESP2: its pub/sub messages are plain replies. Under RESP3 each is a push,
            # which redis-py hands through its push handlers (one formats every message
            # for a debug log whether that is on or not: 5% of a connect wave's CPU).
            self.blocking = aioredis.Redis(
                connection_pool=aioredis.BlockingConnectionPool.from_url(
                    url,
                    connection_class=_connection_class(url),
                    protocol=2,
                    max_connections=2,
                    timeout=None,
                    socket_timeout=None,
                    socket_connect_timeout=_COMMAND_TIMEOUT_S,
                    client_name=client_name,
                )
            )
        # run id -> session id never changes once written, so caching it is always safe.
        self._sessions: OrderedDict[str, str] = OrderedDict()
        # Concurrent calls share round trips (a connect storm's reads, the streams' scripts).
        self.batch = Coalescer(self)

    def node_of(self, key: str) -> str:
        """The name of the node holding `key` ("" on one node)."""
        if not self.cluster:
            return ""
        try:
            node = self.redis.get_node_from_key(key)
        except RedisClusterException:
            node = None
        return node.name if node is not None else ""

    def slot_of(self, key: str) -> int:
        return int(self.redis.keyslot(key)) if self.cluster else 0

    def new_shard(self, node: str) -> _Shard:
        """A pub/sub connection to `node` (see `node_of`)."""
        if not self.cluster:
            assert self.blocking is not None
            return _Shard(self.blocking, self.blocking.pubsub(), owns_client=False)
        if not node:  # no node serves the slot (yet): mid-failover, as a command would say
            raise RedisClusterException("no Redis Cluster node serves the followed log's slot")
        host, _, port = node.rpartition(":")
        client = aioredis.Redis(
            host=host or "127.0.0.1",
            port=int(port),
            username=self._user,
            password=self._password,
            socket_connect_timeout=_COMMAND_TIMEOUT_S,
            client_name=self._client_name,
            protocol=2,  # as on one node (`blocking`)
        )
        return _Shard(client, client.pubsub(), owns_client=True)

    async def write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a writing script; with `min_replicas`, return only once that many replicas
        acknowledged it (WAIT, on the same connection, in the same round trip).

        A write not acknowledged in time raises `BackendUnavailable`: it is on the master
        and may or may not survive a failover, so the caller treats it as it treats any
        backend error (a worker abandons the attempt; the lease rules retry it).
        """
        if not self.min_replicas:
            return await self.call(script(keys=keys, args=args))
        wait: list[Any] = ["WAIT", self.min_replicas, self.min_replicas_timeout_ms]
        target = {"target_nodes": self.redis.get_node_from_key(keys[0])} if self.cluster else {}
        for loaded in (False, True):
            async with self.redis.pipeline(transaction=False) as pipe:
                # execute_command: a cluster pipeline blocks its `evalsha` method, not the
                # command (the slot comes from the keys all the same).
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                pipe.execute_command(*wait, **target)
                try:
                    result, acked = await self.call(pipe.execute())
                except BackendUnavailable as exc:
                    if loaded or not isinstance(exc.__cause__, NoScriptError):
                        raise
                    # Not run (the node did not know the script): load it, then run it once.
                    await self.call(self.redis.script_load(script.script))
                    continue
            if int(acked) < self.min_replicas:
                raise BackendUnavailable(
                    f"Redis: {acked} of RUNRELAY_REDIS_MIN_REPLICAS={self.min_replicas} "
                    f"replicas acknowledged a write within {self.min_replicas_timeout_ms} ms"
                )
            return result
        raise AssertionError("unreachable")

    def unavailable(self, exc: Exception) -> BackendUnavailable:
        host = self.url.rpartition("@")[2]
        return BackendUnavailable(f"Redis at {host} is unavailable: {type(exc).__name__}: {exc}")

    async def call(self, coro: Any) -> Any:
        """Await one Redis call; every backend error comes out as `BackendUnavailable`."""
        try:
            if not self.cluster:
                return await coro
            async with self._slots:
                return await coro
        except BACKEND_ERRORS as exc:
            raise self.unavailable(exc) from exc

    def cached_session(self, run_id: str) -> str | None:
        """The run's session id if this process has looked it up (it never changes)."""
        session_id = self._sessions.get(run_id)
        if session_id is not None:
            self._sessions.move_to_end(run_id)
        return session_id

    def remember_session(self, run_id: str, session_id: str) -> None:
        self._sessions[run_id] = session_id
        if len(self._sessions) > _INDEX_CACHE:
            self._sessions.popitem(last=False)

    async def session_of(self, run_id: str) -> str | None:
        session_id = self.cached_session(run_id)
        if session_id is not None:
            return session_id
        raw = await self.batch.command("GET", self.keys.run_index(run_id))
        if raw is None:
            return None
        session_id = str(raw.decode())
        self.remember_session(run_id, session_id)
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
        if self.blocking is not None:
            await self.blocking.aclose()


# A packed command, how to run it again alone if Redis did not know its script (None:
# not a script), and where its reply goes.
_Call = tuple[bytes, Callable[[], Awaitable[Any]] | None, "asyncio.Future[Any]"]


class Coalescer:
    """Calls made while a batch is in flight go out together as the next batch: one
    pipeline, one round trip, in arrival order, each caller with its own reply or error.

    One batch in flight at a time, so calls reach Redis in the order they were made
    (two appends to one stream are never reordered between connections), and under load
    the batch grows instead of the queue for the pool's connections. Each call stays its
    own atomic command or script. Replies are Redis's own, without redis-py's response
    callbacks (a hash is a map under RESP3). On a cluster, calls go out one by one
    (`RedisConnection.call`), one at a time per slot (so per stream), in arrival order.
    """

    def __init__(self, conn: RedisConnection) -> None:
        self._conn = conn
        self._queue: list[_Call] = []
        self._drainer: asyncio.Task[None] | None = None
        self._held: AbstractConnection | None = None  # while draining
        self._slots: dict[int, tuple[asyncio.Lock, list[int]]] = {}

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a registered script (`redis.register_script`)."""
        if self._conn.cluster:
            return await self._in_slot_order(keys[0], lambda: script(keys=keys, args=args))
        packed = hiredis.pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        return await self._queued(packed, lambda: script(keys=keys, args=args))

    async def command(self, *args: str | bytes | int) -> Any:
        """Run one plain command whose first key is ``args[1]``; its reply as Redis sent
        it (on a cluster, routed by redis-py to the key's node, as it comes from there)."""
        if self._conn.cluster:
            return await self._conn.call(self._conn.redis.execute_command(*args))
        return await self._queued(hiredis.pack_command(args), None)  # type: ignore[arg-type]

    async def _queued(self, packed: bytes, alone: Callable[[], Awaitable[Any]] | None) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((packed, alone, done))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await done

    async def _in_slot_order(self, key: str, call: Callable[[], Awaitable[Any]]) -> Any:
        # One call per slot at a time, in arrival order (asyncio.Lock is first come,
        # first served): a stream's appends are not reordered between connections.
        slot = self._conn.slot_of(key)
        entry = self._slots.get(slot)
        if entry is None:
            entry = self._slots[slot] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                return await self._conn.call(call())
        finally:
            users[0] -= 1
            if not users[0]:
                del self._slots[slot]

    async def _drain(self) -> None:
        # One pooled connection for as long as batches follow one another (`_held`): a
        # connect wave's batches each took and gave back one (6% of its CPU, in redis-py).
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            # Settled before the release below awaits: a call made meanwhile starts a
            # drain of its own, and must not be failed here.
            self._drainer = None
            held, self._held = self._held, None
            left, self._queue = self._queue, []
            for *_, done in left:  # only if cancelled (the loop is closing)
                if not done.done():
                    done.set_exception(BackendUnavailable("Redis: the API is shutting down"))
            if held is not None:
                await self._conn.redis.connection_pool.release(held)

    async def _send(self, batch: list[_Call]) -> None:
        # Packed by hiredis as each call arrived, the replies read off one pooled
        # connection: redis-py's pipeline would encode every argument in Python.
        packed = b"".join([call[0] for call in batch])
        replies: list[Any] = []
        try:
            connection = self._held
            if connection is None:
                connection = self._held = await self._conn.redis.connection_pool.get_connection()
            else:
                await connection.connect()  # type: ignore[no-untyped-call]  # reset meanwhile: afresh
            try:
                await connection.send_packed_command(packed, check_health=False)
                # One deadline for the batch's replies, not one timer per reply (redis-py's
                # per-read timeout was a twentieth of a Durable Streams append's CPU).
                async with asyncio.timeout(_COMMAND_TIMEOUT_S):
                    for _ in batch:
                        try:
                            replies.append(await connection.read_response(timeout=math.inf))
                        except ResponseError as exc:  # this call's error; the next follows
                            replies.append(exc)
            except BaseException:
                # Replies may be left unread: the next batch must not read them.
                await connection.disconnect()
                raise
        except BACKEND_ERRORS as exc:
            replies += [exc] * (len(batch) - len(replies))
        except BaseException:
            error = BackendUnavailable("Redis: the call was cancelled")
            for *_, done in batch:
                if not done.done():
                    done.set_exception(error)
            raise
        for (_, alone, done), reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and alone is not None:
                # Not run (a restart, SCRIPT FLUSH): this call loads it and runs once more.
                try:
                    reply = await self._conn.call(alone())
                except BackendUnavailable as exc:
                    reply = exc
            if done.done():  # the caller went away; the call ran all the same
                continue
            if isinstance(reply, BackendUnavailable):
                done.set_exception(reply)
            elif isinstance(reply, Exception):
                done.set_exception(self._conn.unavailable(reply))
            else:
                done.set_result(reply)


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
            if client is not None:
                client.set_response_callback("XREAD", _raw)
        self._feed = _ChangeFeed(conn)
        self._append_topic = self._redis.register_script(scripts.APPEND_TOPIC)

    async def ping(self) -> None:
        try:
            await self._call(self._redis.ping())
        except BackendUnavailable as exc:
            # At start, say which setting points here (SPEC §11: name the variable).
            raise BackendUnavailable(f"{exc} (check RUNRELAY_REDIS_URL)") from exc

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
        result = await self.conn.write(
            self._create,
            self.conn.run_keys(owner, session_id, run_id),
            [
                owner,
                run_id,
                score,
                *scripts.frame_events(((first_type, first_body),)),
                self._max_events,
                len(fields),
                *flat_pairs(fields),
            ],
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
            keys = self.conn.run_keys(b.owner, b.session_id, b.run_id)
            events = scripts.frame_events(b.events)  # 2 arguments, not 2 per event
            calls.append(("EVALSHA", self._append.sha, 5, *keys, *self._rule_args(b.rule), *events))
        if self.conn.cluster or self.conn.min_replicas:
            # Each batch on its own (concurrently): `conn.write` routes it to its slot's
            # node and, with RUNRELAY_REDIS_MIN_REPLICAS, WAITs for it on that connection.
            replies = await asyncio.gather(
                *(self._write_one(list(call[3:8]), list(call[8:])) for call in calls)
            )
        else:
            replies = await self._pipelined(calls)
        out: list[int | RunRelayError] = []
        expire = []
        for b, reply in zip(batches, replies, strict=True):
            if isinstance(reply, BackendUnavailable):
                out.append(reply)
                continue
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
        if expire:  # with the other calls waiting now (runs ending together)
            index = self.keys.run_index
            await asyncio.gather(
                *(self.conn.batch.command("EXPIRE", index(r), self._ttl_s) for r in expire)
            )
        return out

    async def _write_one(self, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self.conn.write(self._append, keys, args)
        except BackendUnavailable as exc:
            return exc

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
            return await self._xread_blocking(cursors, count, timeout_s)
        try:
            ready = await self._feed.ready(cursors, timeout_s)
        except BACKEND_ERRORS as exc:
            await self._feed.reset()
            raise self.conn.unavailable(exc) from exc
        if not ready:
            return {}
        found = await self._xread({k: cursors[k] for k in ready}, count)
        self._feed.more(k for k, events in found.items() if len(events) >= count)
        return found

    async def _xread(self, cursors: Mapping[str, int], count: int) -> dict[str, list[StoredEvent]]:
        """One XREAD (no BLOCK) of `cursors`; on a Cluster one per slot, pipelined by node."""
        if not self.conn.cluster:
            # Through the Coalescer: shares the round trip of the calls made meanwhile (a
            # connect wave's ownership checks), without redis-py's per-command layers.
            streams = _streams(cursors)
            return _pairs_of(
                await self.conn.batch.command(
                    "XREAD", "COUNT", count, "STREAMS", *streams, *streams.values()
                )
            )
        by_slot: dict[int, dict[str, int]] = {}
        for key, cursor in cursors.items():
            by_slot.setdefault(self.conn.slot_of(key), {})[key] = cursor
        async with self._redis.pipeline(transaction=False) as pipe:
            for group in by_slot.values():
                pipe.xread(_streams(group), count=count)
            replies = await self._call(pipe.execute())
        found: dict[str, list[StoredEvent]] = {}
        for reply in replies:
            found.update(_pairs_of(reply))
        return found

    async def _xread_blocking(
        self, cursors: Mapping[str, int], count: int, timeout_s: float
    ) -> dict[str, list[StoredEvent]]:
        if self._blocking is not None:
            block = max(1, int(timeout_s * 1000))
            try:
                reply = await self._blocking.xread(_streams(cursors), count=count, block=block)
            except BACKEND_ERRORS as exc:
                raise self.conn.unavailable(exc) from exc
            return _pairs_of(reply)
        # A Cluster cannot block on logs of several slots at once: this rare second waiter
        # polls instead (the hub, the one waiter that matters, has the change feed).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            found = await self._xread(cursors, count)
            remaining = deadline - loop.time()
            if found or remaining <= 0:
                return found
            await asyncio.sleep(min(_POLL_S, remaining))

    async def idle(self) -> None:
        if not self._feed.busy:
            await self._feed.reset()

    async def wake(self, wake_key: str) -> None:
        # The change feed's own wait is woken in the process, with no round trip (a connect
        # wave of 2,000 streams makes hundreds of wakes: 5% of its CPU went to them).
        if self._feed.interrupt(wake_key):
            return
        # Another waiter's: the change feed hears the SPUBLISH, a plain blocking XREAD
        # (see `wait`) the XADD.
        # Ids 0-1, 0-2, ...: like a log's, so a reader's integer cursor passes each wake once
        # (an auto id would always be past "0-N" and make every wait return at once).
        # Same fields as an event ("t", "d"): `wait` decodes every stream it reads alike.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.spublish(wake_key, b"0")
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
