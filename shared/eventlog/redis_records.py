"""Run records, the reaper's schedule and the worker registry on Redis; `redis_stores`.

They share the event log's `RedisConnection` (its pools, keys and error translation).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from shared.eventlog import scripts
from shared.eventlog.base import WORKER_HISTORY_S, Stores, record_from, worker_history
from shared.eventlog.redis import RedisConnection, RedisEventLog, decoded, flat_pairs
from shared.eventlog.redis_streams import RedisStreamStore
from shared.eventlog.scripts import HEAD_FIELDS
from shared.models import Operation, RunHead, RunRecord, RunStatus


class RedisRunStore:
    """`RunStore` on Redis: each run's record is a hash in its session's slot."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.keys = conn.keys
        self._redis = conn.redis
        self._call = conn.call
        self._update = self._redis.register_script(scripts.UPDATE)
        self._admit_active = self._redis.register_script(scripts.ADMIT_ACTIVE)
        self._read_run = self._redis.register_script(scripts.READ_RUN)

    async def get_run(self, run_id: str) -> RunRecord | None:
        found = await self._read(run_id, ())
        if found is None:
            return None
        reply = found[1]
        # A map (RESP3 HGETALL), or a flat list (a script's reply, or a RESP2 connection).
        raw = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
        return record_from(decoded(raw)) if raw else None

    async def get_head(self, run_id: str) -> RunHead | None:
        found = await self._read(run_id, HEAD_FIELDS)
        if found is None:
            return None
        session_id, (owner, status, last) = found
        if owner is None:  # the index outlived the record
            return None
        return RunHead(
            run_id, session_id, owner.decode(), RunStatus(status.decode()), int(last or b"0")
        )

    async def _read(self, run_id: str, fields: tuple[str, ...]) -> tuple[str, Any] | None:
        """The run's session id and its record's reply: all of it (HGETALL), or the values
        of `fields` (HMGET); None when the run is unknown. Each call with the other calls
        waiting now, in one round trip."""
        conn = self.conn
        session_id = conn.cached_session(run_id)
        if session_id is None and not conn.cluster:
            # Not looked up here yet (a client reconnecting to another API process): the
            # index and the record in one call, not two round trips one after the other.
            head, tail = self.keys.run_around(run_id)
            found = await conn.batch.call(
                self._read_run, [self.keys.run_index(run_id)], [head, tail, *fields]
            )
            if not found:
                return None
            session, reply = found
            session_id = session.decode()
            conn.remember_session(run_id, session_id)
            return session_id, reply
        if session_id is None:  # a Cluster: the index first, on its own slot
            session_id = await conn.session_of(run_id)
            if session_id is None:
                return None
        key = self.keys.run(session_id, run_id)
        command = ("HMGET", key, *fields) if fields else ("HGETALL", key)
        return session_id, await conn.batch.command(*command)

    async def update_run(
        self, run_id: str, expect: Mapping[str, str], fields: Mapping[str, str]
    ) -> tuple[bool, RunRecord | None]:
        session_id = await self.conn.session_of(run_id)
        if session_id is None:
            return False, None
        applied, flat = await self._call(
            self._update(
                keys=[self.keys.run(session_id, run_id)],
                args=[len(expect), *flat_pairs(expect), len(fields), *flat_pairs(fields)],
            )
        )
        if not flat:
            return False, None
        record = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return bool(applied), record_from(record)

    # The owner's active runs ---------------------------------------------------------
    async def admit_active(self, owner: str, run_id: str, limit: int) -> bool:
        admitted = await self._call(
            self._admit_active(
                keys=[self.keys.owner_active(owner)], args=[run_id, limit, time.time()]
            )
        )
        return bool(admitted)

    async def drop_active(self, owner: str, run_ids: Sequence[str]) -> None:
        if run_ids:
            # With the other calls waiting now (runs ending together), in one round trip.
            await self.conn.batch.command("ZREM", self.keys.owner_active(owner), *run_ids)

    async def active_runs(self, owner: str, limit: int) -> list[str]:
        key = self.keys.owner_active(owner)
        members = await self._call(self._redis.zrange(key, 0, limit - 1))
        return [member.decode() for member in members]

    async def list_runs(
        self, owner: str, session_id: str | None, limit: int, offset: int
    ) -> list[RunRecord]:
        if session_id is not None:
            members = await self._call(
                self._redis.zrevrange(
                    self.keys.session_runs(session_id, owner), offset, offset + limit - 1
                )
            )
            refs = [(session_id, m.decode()) for m in members]
        else:
            members = await self._call(
                self._redis.zrevrange(self.keys.owner_runs(owner), offset, offset + limit - 1)
            )
            refs = [tuple(m.decode().split("/", 1)) for m in members]
        if not refs:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid, rid in refs:
                pipe.hgetall(self.keys.run(sid, rid))
            raws = await self._call(pipe.execute())
        records = [decoded(raw) for raw in raws if raw]
        expired = [f"{sid}/{rid}" for (sid, rid), raw in zip(refs, raws, strict=True) if not raw]
        if expired and session_id is None:
            await self._call(self._redis.zrem(self.keys.owner_runs(owner), *expired))
        return [record_from(r) for r in records if r.get("owner") == owner]

    async def session_exists(self, owner: str, session_id: str) -> bool:
        key = self.keys.session(session_id, owner)
        return bool(await self._call(self._redis.exists(key)))

    async def claim_idempotency(self, owner: str, key: str, run_id: str, ttl_s: int) -> str:
        k = self.keys.idempotency(owner, key)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(k, run_id, nx=True, ex=ttl_s)
            pipe.get(k)
            _, bound = await self._call(pipe.execute())
        return str(bound.decode())

    # Operations -------------------------------------------------------------------
    async def put_operation(self, op: Operation, ttl_s: int) -> bool:
        created = await self._call(
            self._redis.set(
                self.keys.operation(op.operation_id), op.model_dump_json(), nx=True, ex=ttl_s
            )
        )
        return bool(created)

    async def get_operation(self, operation_id: str) -> Operation | None:
        raw = await self._call(self._redis.get(self.keys.operation(operation_id)))
        return Operation.model_validate_json(raw) if raw is not None else None


class RedisScheduler:
    """`Scheduler` on Redis: one sorted set of run ids by due time."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.keys = conn.keys
        self._redis = conn.redis
        self._call = conn.call

    async def schedule(self, run_id: str, due: float) -> None:
        await self._call(self._redis.zadd(self.keys.deadlines(), {run_id: due}))

    async def due(self, now: float, limit: int) -> list[str]:
        raw = await self._call(
            self._redis.zrangebyscore(self.keys.deadlines(), "-inf", now, start=0, num=limit)
        )
        return [r.decode() for r in raw]

    async def unschedule(self, run_id: str) -> None:
        await self.conn.batch.command("ZREM", self.keys.deadlines(), run_id)


class RedisWorkerRegistry:
    """`WorkerRegistry` on Redis: a sorted set of worker ids by live-until, a hash of their
    info. Both keep a worker for `WORKER_HISTORY_S` after it left (the history); each
    command touches one key, so on a cluster the two may sit in any slots."""

    def __init__(self, conn: RedisConnection) -> None:
        self.keys = conn.keys
        self._redis = conn.redis
        self._call = conn.call

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl_s: float) -> None:
        now = time.time()
        horizon = now - WORKER_HISTORY_S
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.keys.workers(), {worker_id: now + ttl_s})
            pipe.hset(
                self.keys.workers_info(),
                worker_id,
                orjson.dumps({**info, "worker_id": worker_id, "last_seen": now}),
            )
            pipe.zrangebyscore(self.keys.workers(), "-inf", f"({horizon}")
            *_, forgotten = await self._call(pipe.execute())
        if forgotten:
            # Not atomic with the read above: a worker that heartbeats again in between,
            # after an hour away, is forgotten until its next heartbeat (seconds later).
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self.keys.workers(), *forgotten)
                pipe.hdel(self.keys.workers_info(), *forgotten)
                await self._call(pipe.execute())

    async def remove(self, worker_id: str) -> None:
        raw = await self._call(self._redis.hget(self.keys.workers_info(), worker_id))
        if raw is None:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(
                self.keys.workers_info(),
                worker_id,
                orjson.dumps({**orjson.loads(raw), "left": "clean"}),
            )
            pipe.zadd(self.keys.workers(), {worker_id: time.time()}, xx=True)
            await self._call(pipe.execute())

    async def live(self) -> list[dict[str, Any]]:
        alive = await self._call(
            self._redis.zrangebyscore(self.keys.workers(), time.time(), "+inf")
        )
        if not alive:
            return []
        infos = await self._call(self._redis.hmget(self.keys.workers_info(), alive))
        found = (orjson.loads(i) for i in infos if i is not None)
        return [info for info in found if not info.get("left")]

    async def recent(self, since: float) -> list[dict[str, Any]]:
        now = time.time()
        scored = await self._call(
            self._redis.zrangebyscore(self.keys.workers(), since, "+inf", withscores=True)
        )
        if not scored:
            return []
        ids = [worker_id for worker_id, _ in scored]
        infos = await self._call(self._redis.hmget(self.keys.workers_info(), ids))
        entries = [
            (orjson.loads(info), until)
            for (_, until), info in zip(scored, infos, strict=True)
            if info is not None
        ]
        return worker_history(entries, since, now)

    async def advertise_tools(self, tools: Sequence[Mapping[str, Any]], now: float) -> None:
        if tools:
            items: list[str | bytes] = []
            for spec in tools:
                items += [str(spec["name"]), orjson.dumps({**spec, "last_seen": now})]
            await self._call(self._redis.hset(self.keys.tools(), items=items))

    async def list_tools(self, since: float) -> list[dict[str, Any]]:
        raw = await self._call(self._redis.hgetall(self.keys.tools()))
        tools = (orjson.loads(value) for _, value in sorted(raw.items()))
        return [t for t in tools if t["last_seen"] >= since]


def redis_stores(
    url: str,
    *,
    prefix: str,
    ttl_s: int,
    max_events: int,
    max_connections: int = 6,
    client_name: str | None = None,
    min_replicas: int = 0,
    min_replicas_timeout_ms: int = 1000,
) -> Stores:
    """The stores on one Redis (or one Redis Cluster), sharing one `RedisConnection`."""
    conn = RedisConnection(
        url,
        prefix=prefix,
        max_connections=max_connections,
        client_name=client_name,
        min_replicas=min_replicas,
        min_replicas_timeout_ms=min_replicas_timeout_ms,
    )
    return Stores(
        log=RedisEventLog(conn, ttl_s=ttl_s, max_events=max_events),
        runs=RedisRunStore(conn),
        scheduler=RedisScheduler(conn),
        workers=RedisWorkerRegistry(conn),
        streams=RedisStreamStore(conn),
    )
