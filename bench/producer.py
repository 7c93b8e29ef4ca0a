"""A fast producer: the real Lua append (`shared.eventlog.scripts.APPEND`), pipelined.

    prod = Producer(redis_url, prefix); await prod.open()
    runs = await prod.runs(100)                     # created and started through `Runs`
    await prod.append(runs, n_each=1000)            # burst: every run gets n events
    await prod.steady(runs, rate=5000, seconds=5)   # data carries "t" (append time, ns)
    await prod.finish(runs)                         # run.completed through `Runs`

`Runs.emit` awaits one script call at a time (a redis-py round trip each, ~5-10k/s
from one connection); the bench needs to drive the server harder than that, so it
sends the same script call (same keys, same arguments an `emit` without a holder
check makes) in pipelines of a few hundred over a few connections. Bench-only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from shared.appender import Appender
from shared.eventlog import scripts
from shared.eventlog.base import encode_body
from shared.eventlog.redis_records import redis_stores
from shared.lifecycle import Runs
from shared.models import RunRecord, RunStatus, utcnow
from shared.settings import Settings

PAYLOAD = "x" * 120  # with the envelope: ~230-byte events on the wire
PUBSUB = "bench-pubsub:"  # baseline (b) channel = this + the log key


class Producer:
    def __init__(self, redis_url: str, prefix: str, connections: int = 4) -> None:
        stores = redis_stores(redis_url, prefix=prefix, ttl_s=600, max_events=200_000)
        self.log = stores.log
        self.lifecycle = Runs(stores)
        self.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=connections, timeout=None
            )
        )
        self.connections = connections
        self.script = self.redis.register_script(scripts.APPEND)
        self.sha = ""
        self.publish = False  # baseline (b): also PUBLISH each event on its log key

    async def open(self) -> None:
        self.sha = await self.redis.script_load(scripts.APPEND)

    async def close(self) -> None:
        await self.redis.aclose()
        await self.log.close()

    async def runs(self, n: int) -> list[RunRecord]:
        if not self.sha:
            await self.open()
        out: list[RunRecord] = []

        async def one() -> None:
            run, _ = await self.lifecycle.create(owner="anonymous", tool="bench", input={})
            started = await self.lifecycle.start(
                run, worker="bench", lease_until=time.time() + 3600
            )
            assert started is not None
            out.append(started)

        for i in range(0, n, 50):
            await asyncio.gather(*(one() for _ in range(min(50, n - i))))
        return out

    def _address(self) -> tuple[str, int]:
        kw = self.redis.connection_pool.connection_kwargs
        return str(kw.get("host", "127.0.0.1")), int(kw.get("port", 6379))

    def log_key(self, run: RunRecord) -> str:
        return self.log.keys.run_log(run.session_id, run.run_id)

    def _args(self, run: RunRecord, data: dict[str, Any]) -> tuple[list[str], list[Any], bytes]:
        type_ = "output.message.delta"
        now = utcnow()
        body = encode_body(run.run_id, run.session_id, type_, data, now)
        k = self.log.keys
        keys = [
            k.run(run.session_id, run.run_id),
            self.log_key(run),
            k.session(run.session_id, run.owner),
            k.session_log(run.session_id, run.owner),
            k.session_runs(run.session_id, run.owner),
        ]
        # APPEND's layout: the rule (no holder check), then the one event (lens, blob).
        events = scripts.frame_events(((type_, body),))
        return keys, ["", "0", ",running,", now, 600, 200_000, 0, 0, *events], body

    async def _send(self, batch: list[tuple[RunRecord, dict[str, Any]]]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            calls = [self._args(run, data) for run, data in batch]
            for keys, args, _ in calls:
                # Plain EVALSHA: a Script in a pipeline costs a SCRIPT EXISTS per execute.
                pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
            results = await pipe.execute()
        if self.publish:
            async with self.redis.pipeline(transaction=False) as pipe:
                for (run, _), (_, _, body), res in zip(batch, calls, results, strict=True):
                    full = b'{"id":%d,' % int(res[0]) + body
                    msg = b'{"id":%d,"type":"output.message.delta","event":%s}' % (
                        int(res[0]),
                        full,
                    )
                    pipe.publish(PUBSUB + self.log_key(run), msg)
                await pipe.execute()

    async def append(self, runs: list[RunRecord], n_each: int, pipeline: int = 200) -> None:
        """n_each events to every run, interleaved, as fast as the pipelines go."""
        data = {"delta": PAYLOAD}
        work = [(run, data) for _ in range(n_each) for run in runs]
        queue = [work[i : i + pipeline] for i in range(0, len(work), pipeline)]

        async def lane() -> None:
            while queue:
                await self._send(queue.pop(0))

        await asyncio.gather(*(lane() for _ in range(self.connections)))

    async def append_as_worker(self, runs: list[RunRecord], n_each: int) -> None:
        """n_each events to every run the way a worker's tools emit them.

        One task per run (a worker runs one tool task per run) emitting through the
        process's coalescing appender (`shared.appender`) under `Runs.emit_rule`,
        each body stamped at emit like `RunContext.emit`, then flushed before the
        terminal event as the worker does. Linger: the shipped default.
        """
        linger_ms = Settings.model_fields["append_linger_ms"].default
        appender = Appender(self.log, linger_s=linger_ms / 1000)
        data = {"delta": PAYLOAD}
        type_ = "output.message.delta"

        async def tool(run: RunRecord) -> None:
            stream = appender.stream(
                run.owner, run.session_id, run.run_id, self.lifecycle.emit_rule(run, "bench")
            )
            for _ in range(n_each):
                body = encode_body(run.run_id, run.session_id, type_, data, utcnow())
                await stream.put(type_, body)
            await stream.flush()

        try:
            await asyncio.gather(*(tool(run) for run in runs))
        finally:
            await appender.close()

    async def append_xadd(self, runs: list[RunRecord], n_each: int, pipeline: int = 200) -> int:
        """n_each plain XADDs to every run's log, then a `run.completed` entry; no script.

        For the ceiling server only (it reads the log's entries and nothing else):
        the cheapest producer Redis has. The commands are packed as raw RESP once per
        pipeline and written on a bare socket per lane: redis-py's packing (~15 µs a
        command) would make this producer, not the server, the limit. Ids follow the
        run's two lifecycle events (``0-3`` on); the run's record is left as it is
        (its keys expire with the TTL).
        """
        body = encode_body("r", "s", "output.message.delta", {"delta": PAYLOAD}, utcnow())
        host, port = self._address()

        def resp(*parts: bytes) -> bytes:
            out = [b"*%d\r\n" % len(parts)]
            out += [b"$%d\r\n%s\r\n" % (len(p), p) for p in parts]
            return b"".join(out)

        async def lane(mine: list[RunRecord]) -> int:
            # A run's ids must arrive in order: each lane owns its runs, in one connection.
            keys = [self.log_key(run).encode() for run in mine]
            work = [(k, 3 + i, b"output.message.delta") for i in range(n_each) for k in keys]
            work += [(k, 3 + n_each, b"run.completed") for k in keys]
            reader, writer = await asyncio.open_connection(host, port)
            try:
                for start in range(0, len(work), pipeline):
                    chunk = work[start : start + pipeline]
                    writer.write(
                        b"".join(
                            resp(
                                b"XADD", k, b"0-%d" % seq, b"t", t, b"d", b'{"id":%d,' % seq + body
                            )
                            for k, seq, t in chunk
                        )
                    )
                    # Each reply is one bulk string, "$3\r\n0-5\r\n": two line ends.
                    got = b""
                    while got.count(b"\r\n") < 2 * len(chunk):
                        data = await reader.read(65536)
                        if not data or data.startswith(b"-") or b"\r\n-" in data:
                            raise RuntimeError(f"bench: XADD failed: {data[:200]!r}")
                        got += data
            finally:
                writer.close()
            return len(work)

        n = self.connections
        return sum(await asyncio.gather(*(lane(runs[k::n]) for k in range(n))))

    async def steady(self, runs: list[RunRecord], rate: float, seconds: float) -> int:
        """`rate` events/s in total, round-robin over runs, every ~2 ms; returns events sent."""
        tick = 0.002
        sent = 0
        index = 0
        start = time.perf_counter()
        end = start + seconds
        pending: set[asyncio.Task[None]] = set()
        while (now := time.perf_counter()) < end:
            due = int((now - start) * rate) - sent
            if due > 0:
                batch = []
                for _ in range(due):
                    batch.append((runs[index % len(runs)], {"delta": PAYLOAD, "t": time.time_ns()}))
                    index += 1
                sent += due
                task = asyncio.create_task(self._send(batch))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.sleep(tick)
        if pending:
            await asyncio.gather(*pending)
        return sent

    async def finish(self, runs: list[RunRecord]) -> None:
        for i in range(0, len(runs), 50):
            await asyncio.gather(
                *(self.lifecycle.finish(r, RunStatus.COMPLETED) for r in runs[i : i + 50])
            )
        if self.publish:
            for run in runs:
                last: Any = await self.redis.xrevrange(self.log_key(run), count=1)
                [(eid, f)] = last
                seq = int(eid.partition(b"-")[2])
                msg = b'{"id":%d,"type":"%s","event":%s}' % (seq, f[b"t"], f[b"d"])
                await self.redis.publish(PUBSUB + self.log_key(run), msg)
