"""Durable Streams: runrelay's /ds/ on Redis against the Node reference server, same run.

    apt-get install wrk        # the append load generator (Debian's wrk 4)
    python -m bench.dstreams [--repeat 2] [--seconds 10] [--connections 32]
                             [--readers 1000] [--sse-rates 10,100] [--sse-seconds 10]
                             [--only runrelay,reference,two]
                             [--figures appends,catchup,sse,memory] [--write]

Targets, one after the other (their order alternates between repeats): runrelay's API
(`bench.servers runrelay`, one process, Redis on 127.0.0.1); `@durable-streams/server`
0.3.7 in memory (tests/conformance/reference-server.mjs, node --expose-gc, installed by
scripts/ensure-conformance); two runrelay API processes on the same Redis prefix, first
with writes through one (A) and reads through the other (B), then with the load spread
over both. Every server is pinned to CPU 0; this process, wrk and every client are pinned
to CPU 1. Redis is shared and not pinned. Figures, per target:

- appends/s to one stream and to 100 streams: `wrk -t1 -c<connections> -d<seconds>`
  POSTs of 100 bytes (a lua script picks the stream per request, round robin); after the
  run every stream is read back and the stored messages must equal wrk's 2xx answers,
  plus at most one in flight per connection when wrk stopped (it abandons those);
- catch-up of a 10 MiB stream (160 appends of 64 KiB) from `-1` to up-to-date with a
  raw keep-alive socket and httptools (the same parser uvicorn uses): median of 3 reads,
  every byte compared with what was written;
- live SSE latency: `--readers` `live=sse` readers of one JSON stream (raw asyncio
  sockets, httptools), all attached before a writer appends ``{"i":n,"t":<ns>}`` at
  each of `--sse-rates` per second for `--sse-seconds` (a server that cannot take that rate gets
  twice the time; the rate achieved is reported); latency = receive time - t, p50/p99
  over every delivery; every reader must get every message once, in order. A reader
  whose response the server ends reconnects from its last control offset, as a client
  does (runrelay ends an SSE response after RUNRELAY_DS_SSE_MAX_S, 60 s);
- memory per idle reader: `--readers` SSE readers (offset `now`), then as many parked
  long-polls, each after a warm-up of 100 of its kind, on one fresh server; runrelay:
  RSS growth per reader; the reference: RSS and live heap (heapUsed + external) after a
  forced full GC, both read inside node. After the figures one append must reach every
  parked reader (so every one was live when measured).

Each check line also gives the servers' CPU share over the figure (from /proc), and for
SSE the client's own CPU and the time it waited for its core: a client that is not the
bottleneck uses well under its core.

The 2-process targets skip the memory figures (each process is the one above).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools  # comes with uvicorn[standard]

from bench.keys import bench_prefix
from bench.report import machine, table, write_section
from bench.servers import pin, raise_fd_limit, spawn, wait_listening

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SUITE = Path(__file__).resolve().parent.parent / "tests" / "conformance"
OCTET = {"Content-Type": "application/octet-stream"}
JSON = {"Content-Type": "application/json"}
CHUNK = 64 * 1024
TEN_MIB = 10 * 1024 * 1024
APPEND_BYTES = 100
WARM_UP = 100
SECTION = "9. Durable Streams"
_MESSAGE = re.compile(rb'"i":(\d+),"t":(\d+)')


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def reference() -> Iterator[tuple[int, int, int]]:
    """The Node reference server, pinned to CPU 0; (port, pid, memory port)."""
    subprocess.run([str(SUITE.parent.parent / "scripts" / "ensure-conformance")], check=True)
    port, memory_port = _free_port(), _free_port()
    proc = subprocess.Popen(
        ["node", "--expose-gc", "reference-server.mjs", str(port), str(memory_port)],
        cwd=SUITE,
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    try:
        wait_listening(port, proc, "reference")
        wait_listening(memory_port, proc, "reference memory endpoint")
        yield port, proc.pid, memory_port
    finally:
        proc.terminate()
        proc.wait(15)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# A raw HTTP/1.1 client: one keep-alive socket, httptools for the answers ----------------
class _Answer:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.status = 0
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode().lower()] = value.decode()

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def _request(method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + "\r\n").encode() + body


class Conn:
    """A blocking keep-alive connection (setup, catch-up reads, checks)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    def call(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> _Answer:
        self.sock.sendall(_request(method, path, body, headers or {}))
        answer = _Answer()
        while not answer.complete:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{method} {path}: the server closed the connection")
            answer.parser.feed_data(data)
        return answer

    def ok(self, method: str, path: str, body: bytes = b"", **headers: str) -> _Answer:
        answer = self.call(method, path, body, headers)
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:200]!r}")
        return answer

    def read_all(self, path: str) -> list[bytes]:
        """Catch-up from -1 to up-to-date: the bodies of every page."""
        pages, offset = [], "-1"
        while True:
            page = self.ok("GET", f"{path}?offset={offset}")
            pages.append(page.body)
            offset = page.headers["stream-next-offset"]
            if page.headers.get("stream-up-to-date") == "true":
                return pages


# Targets ------------------------------------------------------------------------------
@dataclass
class Target:
    label: str
    prefix: str  # "/ds" for runrelay, "" for the reference
    writes: list[int]  # ports appends go to (wrk spreads its connections over them)
    reads: list[int]  # ports readers go to (spread round robin)
    pids: list[int]  # the server processes
    memory: Callable[[], dict[str, float]] | None = None  # KiB figures of the one server
    checks: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.prefix}/bench/{name}"

    def create(self, name: str, headers: dict[str, str]) -> str:
        path = self.path(name)
        with Conn(self.writes[0]) as conn:
            assert conn.call("PUT", path, headers=headers).status == 201, path
        return path


def _runrelay_memory(pid: int) -> Callable[[], dict[str, float]]:
    return lambda: {"rss": float(rss_kib(pid))}


def _reference_memory(memory_port: int) -> Callable[[], dict[str, float]]:
    def sample() -> dict[str, float]:
        with Conn(memory_port) as conn:
            usage = json.loads(conn.ok("GET", "/").body)
        assert usage["gc"], "node runs without --expose-gc"
        return {"rss": usage["rss"] / 1024, "heap": (usage["heapUsed"] + usage["external"]) / 1024}

    return sample


# Appends: wrk --------------------------------------------------------------------------
_LUA = """
local paths = {%s}
local n = 0
wrk.method = "POST"
wrk.body = string.rep("x", %d)
wrk.headers["Content-Type"] = "application/octet-stream"
request = function()
  n = n + 1
  return wrk.format(nil, paths[(n %% #paths) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%%d,"us":%%d,"status":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _wrk(ports: list[int], paths: list[str], connections: int, seconds: int) -> dict[str, Any]:
    """wrk on CPU 1, `connections` split over `ports`; the sums of their summaries."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA % (", ".join(f'"{p}"' for p in paths), APPEND_BYTES))
    try:
        procs = [
            subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{connections // len(ports)}",
                    f"-d{seconds}s",
                    "--timeout",
                    "30s",
                    "-s",
                    script.name,
                    f"http://127.0.0.1:{port}{paths[0]}",
                ],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, {1}),
            )
            for port in ports
        ]
        outs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    finally:
        os.unlink(script.name)
    summaries = []
    for out in outs:
        line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no summary:\n{out}")
        summaries.append(json.loads(line[4:]))
    total = {k: sum(s[k] for s in summaries) for k in summaries[0]}
    total["rate"] = sum(s["requests"] / (s["us"] / 1e6) for s in summaries)
    for worst in ("p50_us", "p99_us"):  # two wrks: the slower one's
        total[worst] = max(s[worst] for s in summaries)
    total["ok"] = total["requests"] - total["status"]
    return total


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def appends(target: Target, streams: int, connections: int, seconds: int) -> str:
    tag = uuid.uuid4().hex[:8]
    paths = [target.create(f"appends-{tag}-{i}", OCTET) for i in range(streams)]
    server, client = cpu_s(target.pids), _children_cpu_s()
    got = _wrk(target.writes, paths, connections, seconds)
    wall = got["us"] / 1e6 / len(target.writes)
    server = (cpu_s(target.pids) - server) / wall
    client = (_children_cpu_s() - client) / wall  # wrk's, once it has exited
    errors = sum(got[k] for k in ("status", "connect", "read", "write", "timeout"))
    with Conn(target.reads[-1]) as conn:
        stored_bytes = sum(len(b) for p in paths for b in conn.read_all(p))
    stored = stored_bytes // APPEND_BYTES
    in_flight = stored - got["ok"]
    held = stored_bytes % APPEND_BYTES == 0 and 0 <= in_flight <= connections and not errors
    target.checks.append(
        f"{streams} stream(s): wrk {got['ok']:,} 2xx, {errors} errors, "
        f"p50/p99 {got['p50_us'] / 1000:.1f}/{got['p99_us'] / 1000:.1f} ms; "
        f"stored {stored:,} (+{in_flight} in flight at wrk's stop); "
        f"CPU used: server(s) {server:.0%}, wrk {client:.0%}" + ("" if held else " **MISMATCH**")
    )
    return f"{got['rate']:,.0f}" + ("" if held else " (lost!)")


# Catch-up -----------------------------------------------------------------------------
def catch_up(target: Target) -> str:
    path = target.create(f"catchup-{uuid.uuid4().hex[:8]}", OCTET)
    written = os.urandom(TEN_MIB)
    with Conn(target.writes[0]) as conn:
        for at in range(0, TEN_MIB, CHUNK):
            conn.ok("POST", path, written[at : at + CHUNK], **OCTET)
    took = []
    cpu = time.process_time()
    with Conn(target.reads[-1]) as conn:
        for _ in range(3):
            start = time.perf_counter()
            pages = conn.read_all(path)
            took.append(time.perf_counter() - start)
            assert b"".join(pages) == written, "catch-up read differs from what was written"
    cpu_share = (time.process_time() - cpu) / sum(took)  # (the comparisons are not timed)
    median = statistics.median(took)
    target.checks.append(
        f"catch-up: {len(pages)} page(s), {', '.join(f'{t * 1000:.0f}' for t in took)} ms, "
        f"client CPU {cpu_share:.0%}"
    )
    return f"{median * 1000:,.0f} ms ({10 / median:,.0f} MiB/s)"


# Live readers: lean asyncio protocols --------------------------------------------------
class _Readers:
    """Counts attachments and completions of many readers."""

    def __init__(self) -> None:
        self.attached = 0
        self.done = 0
        self.goal = 0
        self.event = asyncio.Event()
        self.refused: Counter[int] = Counter()  # answers other than 200, by status

    def refusals(self) -> str:
        return ", ".join(f"{n:,} x {status}" for status, n in sorted(self.refused.items()))

    def bump(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if getattr(self, what) >= self.goal:
            self.event.set()

    async def until(self, what: str, goal: int, limit_s: float) -> None:
        """Until `goal` readers are attached / done, or `limit_s` (then the checks say so)."""
        self.goal = goal
        self.event.clear()
        if getattr(self, what) < goal:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), limit_s)


class SSEReader(asyncio.Protocol):
    """One ``live=sse`` reader of `path` on `port`: attached at its first ``control``
    event; checks that the messages ``{"i":n,...}`` come in order, each once; done after
    `expect` of them; keeps each one's latency (ns) in `latencies` when given. When the
    server ends the response (runrelay does after RUNRELAY_DS_SSE_MAX_S), it reconnects
    from the last control's offset, as a Durable Streams client does."""

    def __init__(
        self,
        group: _Readers,
        port: int,
        path: str,
        offset: str,
        expect: int,
        latencies: list[int] | None,
    ) -> None:
        self.group = group
        self.port, self.path, self.offset = port, path, offset
        self.expect = expect
        self.latencies = latencies
        self.parser = httptools.HttpResponseParser(self)
        self.buf = b""
        self.attached = False
        self.ended = False  # closed by us, or the stream is closed
        self.reconnects = 0
        self.failures = 0  # consecutive failed connections (for the back-off)
        self.pending: asyncio.Task[None] | None = None
        self.got = 0  # messages received in order, each once
        self.wrong = 0  # duplicates, gaps, reorderings
        self.transport: asyncio.Transport | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self, "127.0.0.1", self.port)
        except OSError:
            self.group.refused[0] += 1
            self.retry()

    def retry(self) -> None:
        """Connect again after a back-off (0.1 s, doubling up to 2 s), as a client does."""
        if self.ended:
            return
        self.failures += 1
        delay = min(0.1 * 2 ** (self.failures - 1), 2.0)
        loop = asyncio.get_running_loop()

        def again() -> None:
            self.pending = loop.create_task(self.connect())  # (a task needs a reference)

        loop.call_later(delay, again)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpResponseParser(self)
        self.buf = b""
        self.transport.write(_live_request(self.path, self.offset, "sse"))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 200:
            self.failures = 0
        else:
            self.group.refused[status] += 1
            if self.transport is not None:
                self.transport.close()  # and retry, from connection_lost

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        buf = self.buf + body if self.buf else body
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self.buf = buf
            return
        events, self.buf = buf[:cut], buf[cut + 2 :]
        found = _MESSAGE.findall(events)
        if found:
            now = time.time_ns()
            before = self.got + self.wrong
            for i, t in found:
                if int(i) == self.got:
                    self.got += 1
                else:
                    self.wrong += 1
                if self.latencies is not None:
                    self.latencies.append(now - int(t))
            if before < self.expect <= self.got + self.wrong:
                self.group.bump("done")
        at = events.rfind(b'"streamNextOffset":"')
        if at >= 0:
            self.offset = events[at + 20 : events.index(b'"', at + 20)].decode()
            self.ended = self.ended or b'"streamClosed":true' in events[at:]
            if not self.attached:
                self.attached = True
                self.group.bump("attached")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ended:
            self.reconnects += 1
            self.retry()

    def close(self) -> None:
        self.ended = True
        if self.transport is not None:
            self.transport.close()


class LongPoll(asyncio.Protocol):
    """One parked long-poll; done when its answer is complete."""

    def __init__(self, group: _Readers, port: int, request: bytes) -> None:
        self.group = group
        self.port = port
        self.request = request
        self.answer = _Answer()
        self.transport: asyncio.Transport | None = None

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, "127.0.0.1", self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        was = self.answer.complete
        self.answer.parser.feed_data(data)
        if self.answer.complete and not was:
            if self.answer.status != 200:
                self.group.refused[self.answer.status] += 1
            self.group.bump("done")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _open(readers: list[LongPoll] | list[SSEReader], wave: int = 200) -> None:
    """Connect the readers in waves (accept backlogs are finite)."""
    for at in range(0, len(readers), wave):
        await asyncio.gather(*(r.connect() for r in readers[at : at + wave]))


class Writer:
    """An async keep-alive connection for the paced writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Writer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        self.writer.write(_request("POST", path, body, headers))
        answer = _Answer()
        while not answer.complete:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("the server closed the writer's connection")
            answer.parser.feed_data(data)
        return answer.status

    def close(self) -> None:
        self.writer.close()


def _live_request(path: str, offset: str, live: str) -> bytes:
    return f"GET {path}?offset={offset}&live={live} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()


def _ms(ns: float) -> float:
    return ns / 1e6


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def waited_s() -> float:
    """Seconds this process has spent runnable but waiting for its core."""
    return int(Path("/proc/self/schedstat").read_text().split()[1]) / 1e9


async def sse_latency(target: Target, readers: int, rate: float, seconds: float) -> str:
    """p50 / p99 of publish -> receive over every delivery to `readers` SSE readers."""
    path = target.create(f"sse-{uuid.uuid4().hex[:8]}", JSON)
    group = _Readers()
    latencies: list[int] = []
    ports = target.reads
    fleet = [
        SSEReader(group, ports[i % len(ports)], path, "-1", 1 << 62, latencies)
        for i in range(readers)
    ]
    writer = None
    try:
        await _open(fleet)
        await group.until("attached", readers, 60)
        writer = await Writer.open(target.writes[0])
        cpu, wall, wait, server = (
            time.process_time(),
            time.perf_counter(),
            waited_s(),
            cpu_s(target.pids),
        )
        loop = asyncio.get_running_loop()
        start = loop.time()
        written = 0
        # At `rate` per second for `seconds`; a server that cannot take the rate gets
        # twice that time at most (the achieved rate is reported).
        while written < rate * seconds and loop.time() < start + 2 * seconds:
            delay = start + written / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            body = b'{"i":%d,"t":%d}' % (written, time.time_ns())
            status = await writer.post(path, body, JSON)
            assert status in (200, 204), status
            written += 1
        achieved = written / (loop.time() - start)
        for r in fleet:
            r.expect = written
        group.done = sum(1 for r in fleet if r.got + r.wrong >= written)
        with contextlib.suppress(TimeoutError):
            await group.until("done", readers, 90)
        took = time.perf_counter() - wall
        client = (time.process_time() - cpu) / took
        starved = (waited_s() - wait) / took
        server = (cpu_s(target.pids) - server) / took
    finally:
        if writer is not None:
            writer.close()
        for r in fleet:
            r.close()
    complete = sum(1 for r in fleet if r.got == written and not r.wrong)
    reconnects = sum(r.reconnects for r in fleet)
    ordered = sorted(latencies)
    p50, p99 = _ms(ordered[len(ordered) // 2]), _ms(ordered[int(len(ordered) * 0.99)])
    held = complete == readers and len(latencies) == readers * written
    where = ""
    if target.reads != target.writes:
        where = f" (writer on A, readers on {'A+B' if len(target.reads) > 1 else 'B'})"
    target.checks.append(
        f"SSE: {written:,} messages at {achieved:.0f}/s (asked {rate:g}/s) to {readers:,} "
        f"readers{where}: {complete:,} got every message once, in order; max "
        f"{_ms(ordered[-1]):,.0f} ms; {reconnects:,} reconnects"
        + (f" (answers: {group.refusals()})" if group.refused else "")
        + "; CPU used: server(s) "
        f"{server:.0%}, client {client:.0%} (and {starved:.0%} waiting for its core)"
        + (
            ""
            if held
            else f" **{readers - complete} readers missed or repeated messages: "
            + ", ".join(
                f"got {r.got} in order, {r.wrong} wrong"
                for r in fleet
                if r.got != written or r.wrong
            )[:300]
            + "**"
        )
    )
    return f"{p50:,.0f} / {p99:,.0f} ms" + ("" if held else " (lost!)")


async def idle_memory(target: Target, readers: int) -> tuple[str, str]:
    """KiB per idle long-poll and per idle SSE reader (both kinds parked on one stream)."""
    sample = target.memory
    assert sample is not None
    path = target.create(f"idle-{uuid.uuid4().hex[:8]}", JSON)
    polls, sses = _Readers(), _Readers()
    figures: list[dict[str, float]] = []
    opened_polls: list[LongPoll] = []
    opened_sses: list[SSEReader] = []
    try:
        # SSE first: runrelay ends a parked long-poll after 20 s (RUNRELAY_DS_LONG_POLL_S),
        # the reference after 30 s, and all must still be parked at the final append.
        for count in (WARM_UP, readers):
            port = target.reads[0]
            sse_batch = [SSEReader(sses, port, path, "now", 1, None) for _ in range(count)]
            opened_sses += sse_batch
            await _open(sse_batch)
            await sses.until("attached", len(opened_sses), 60)
            await asyncio.sleep(1)
            figures.append(sample())
        for count in (WARM_UP, readers):
            request = _live_request(path, "now", "long-poll")
            batch = [LongPoll(polls, target.reads[0], request) for _ in range(count)]
            opened_polls += batch
            await _open(batch)
            await asyncio.sleep(2)  # a bench, not a test: let every request park (checked below)
            figures.append(sample())
        # Every reader must have been live: one append reaches them all.
        with Conn(target.writes[0]) as conn:
            conn.ok("POST", path, b'{"i":0,"t":0}', **JSON)
        with contextlib.suppress(TimeoutError):
            await polls.until("done", len(opened_polls), 30)
            await sses.until("done", len(opened_sses), 30)
        answered = sum(
            1 for p in opened_polls if p.answer.status == 200 and b'"i":0' in p.answer.body
        )
        reached = sum(1 for s in opened_sses if s.got == 1 and not s.wrong)
        target.checks.append(
            f"idle readers: after the figures one append reached {answered:,}/"
            f"{len(opened_polls):,} long-polls and {reached:,}/{len(opened_sses):,} SSE readers"
            + (f"; long-polls answered {polls.refusals()}" if polls.refused else "")
            + (f"; SSE connections refused {sses.refusals()}" if sses.refused else "")
            + f"; {sum(r.reconnects for r in opened_sses):,} SSE reconnects"
        )
    finally:
        for poll in opened_polls:
            poll.close()
        for reader in opened_sses:
            reader.close()

    def per_reader(before: dict[str, float], after: dict[str, float]) -> str:
        rss = (after["rss"] - before["rss"]) / readers
        if "heap" not in after:
            return f"{rss:.1f}"
        return f"{rss:.1f} (heap {(after['heap'] - before['heap']) / readers:.1f})"

    return per_reader(figures[2], figures[3]), per_reader(figures[0], figures[1])


# The run ------------------------------------------------------------------------------
FIGURES = ("appends", "catchup", "sse", "memory")


def measure(target: Target, args: argparse.Namespace) -> list[str]:
    """The row of `target`: "—" for a figure not asked for (``--figures``)."""
    wanted = args.figures
    cells = ["—", "—"]
    # First, on a fresh process: no freed memory to reuse.
    if target.memory is not None and "memory" in wanted:
        cells = list(asyncio.run(idle_memory(target, args.readers)))
    one = many = read = "—"
    if "appends" in wanted:
        one = appends(target, 1, args.connections, args.seconds)
        many = appends(target, 100, args.connections, args.seconds)
    if "catchup" in wanted:
        read = catch_up(target)
    live = [
        asyncio.run(sse_latency(target, args.readers, rate, args.sse_seconds))
        if "sse" in wanted
        else "—"
        for rate in args.sse_rates
    ]
    return [one, many, read, *live, *cells]


@contextlib.contextmanager
def _runrelay(processes: int) -> Iterator[list[Target]]:
    prefix = bench_prefix("rrbench-ds-{}:")
    try:
        with contextlib.ExitStack() as stack:
            servers = [
                stack.enter_context(spawn("runrelay", prefix, REDIS_URL)) for _ in range(processes)
            ]
            if processes == 1:
                ((port, pid),) = servers
                label = "runrelay api, 1 process (Redis)"
                yield [Target(label, "/ds", [port], [port], [pid], _runrelay_memory(pid))]
            else:
                (a, pid_a), (b, pid_b) = servers
                pids = [pid_a, pid_b]
                split = "runrelay, 2 API processes: writes via A, reads via B"
                spread = "runrelay, 2 API processes: load on both"
                yield [
                    Target(split, "/ds", [a], [b], pids),
                    Target(spread, "/ds", [a, b], [a, b], pids),
                ]
    finally:
        _forget(prefix)


def _forget(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for at in range(0, len(keys), 500):
            client.unlink(*keys[at : at + 500])
    finally:
        client.close()


@contextlib.contextmanager
def _reference() -> Iterator[list[Target]]:
    with reference() as (port, pid, memory_port):
        label = "@durable-streams/server 0.3.7 (memory, 1 process)"
        yield [Target(label, "", [port], [port], [pid], _reference_memory(memory_port))]


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def run(number: int, args: argparse.Namespace) -> str:
    every: dict[str, Callable[[], contextlib.AbstractContextManager[list[Target]]]] = {
        "runrelay": lambda: _runrelay(1),
        "reference": _reference,
        "two": lambda: _runrelay(2),
    }
    kinds = [every[name] for name in args.only.split(",")]
    if number % 2 == 0 and len(kinds) > 1:  # alternate who goes first: the machine is shared
        kinds[0], kinds[1] = kinds[1], kinds[0]
    started, load = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), _load()
    rows, checks = {}, []
    for kind in kinds:
        with kind() as targets:
            for target in targets:
                print(f"run {number}: {target.label} ...", flush=True)
                rows[target.label] = measure(target, args)
                checks += [f"- {target.label}: " + "; ".join(target.checks)]
    rank = ("runrelay api", "@", "runrelay, 2 API processes: writes", "runrelay, 2")
    order = sorted(rows, key=lambda label: [label.startswith(r) for r in rank].index(True))
    headers = [
        "server",
        "appends/s, 1 stream",
        "appends/s, 100 streams",
        "catch-up of 10 MiB",
        *(f"SSE p50 / p99, {args.readers:,} readers, {r:g}/s" for r in args.sse_rates),
        "KiB per idle long-poll",
        "KiB per idle SSE reader",
    ]
    return (
        f"### Run {number}: {started}, load average {load} at the start, {_load()} at the end\n\n"
        + table(headers, [[label, *rows[label]] for label in order])
        + "\n\nChecks:\n\n"
        + "\n".join(checks)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2, help="whole runs, order alternating")
    parser.add_argument("--seconds", type=int, default=10, help="wrk's duration per figure")
    parser.add_argument("--connections", type=int, default=32, help="wrk's connections")
    parser.add_argument("--readers", type=int, default=1000, help="SSE / idle readers")
    parser.add_argument(
        "--sse-rates",
        type=lambda raw: [float(r) for r in raw.split(",")],
        default=[10.0, 100.0],
        help="messages/s the writer appends, one SSE figure each",
    )
    parser.add_argument("--sse-seconds", type=float, default=10)
    parser.add_argument("--only", default="runrelay,reference,two", help="targets, for a look")
    parser.add_argument(
        "--figures",
        type=lambda raw: raw.split(","),
        default=list(FIGURES),
        help=f"figures to measure, for a look ({','.join(FIGURES)}); not with --write",
    )
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md §9")
    args = parser.parse_args()
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error(f"--figures: no figure {', '.join(sorted(unknown))}")
    if args.write and set(args.figures) != set(FIGURES):
        parser.error("--write needs every figure")
    pin(1)  # the client; each server pins itself (or is pinned) to CPU 0
    raise_fd_limit()
    runs = [run(number, args) for number in range(1, args.repeat + 1)]
    command = (
        f"python -m bench.dstreams --repeat {args.repeat} --seconds {args.seconds} "
        f"--connections {args.connections} --readers {args.readers} "
        f"--sse-rates {','.join(f'{r:g}' for r in args.sse_rates)} "
        f"--sse-seconds {args.sse_seconds:g}"
        + (f" --only {args.only}" if args.only != "runrelay,reference,two" else "")
        + (f" --figures {','.join(args.figures)}" if set(args.figures) != set(FIGURES) else "")
    )
    body = (
        f"`{command}` on {machine()}, a machine shared with other engineers' work (see the "
        "load averages). Every server pinned to CPU 0; the bench, wrk and all clients on "
        "CPU 1; Redis shared and unpinned. A and B are two runrelay API processes on the "
        "same Redis prefix. Appends: wrk, 100-byte POSTs, then every stream read back "
        "(stored = wrk's 2xx + what was in flight when wrk stopped: nothing lost). "
        "Catch-up: median of 3 raw-socket reads, compared byte for byte. SSE: every "
        "reader attached before the first append; latency = receive time - the writer's "
        "timestamp in the message, over every delivery; the writer appends at the rate "
        "asked or as fast as the server answers (the checks give the rate achieved); a "
        "reader whose response ends or fails reconnects from its last offset, as a client "
        "does. Idle memory: growth per reader after a warm-up of "
        f"{WARM_UP}; the reference's figures are taken inside node after a forced full GC "
        "(RSS, and in brackets heapUsed + external). RSS against RSS is the comparable "
        "figure: it holds sockets, buffers and allocator slack in both runtimes; the "
        "reference's heap figure is its JavaScript objects alone, a lower bound. The "
        "checks give the CPU share each side used (a server well under 100% of its core "
        "is waiting, not computing; a client well under its core is not the limit).\n\n"
        + "\n\n".join(runs)
    )
    print(body)
    if args.write:
        write_section(SECTION, body, owned=r"Run \d+:")


if __name__ == "__main__":
    main()
