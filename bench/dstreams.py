"""Durable Streams: runrelay's /ds/ on Redis against the Node reference server, same run.

    python -m bench.dstreams [--appends 3000] [--readers 500] [--write]

Both servers are child processes pinned to CPU 0 (runrelay: `bench.servers runrelay`,
one API process; the reference: `@durable-streams/server` 0.3.7 in memory, from
tests/conformance, installed by scripts/ensure-conformance). Figures:

- appends/s to one stream: `--appends` POSTs of 100 bytes from 16 connections;
- catch-up read of a 10 MiB stream (written in 64 KiB appends) from `-1` to up-to-date;
- memory per idle long-poll reader: server RSS with `--readers` parked long-polls
  (each its own connection, offset `now`) minus RSS before, per reader.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.report import machine, table, write_section
from bench.servers import spawn, wait_listening

REDIS_URL = os.environ.get("RUNRELAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
SUITE = Path(__file__).resolve().parent.parent / "tests" / "conformance"
OCTET = {"Content-Type": "application/octet-stream"}
CHUNK = 64 * 1024
TEN_MIB = 10 * 1024 * 1024


@contextlib.contextmanager
def reference() -> Iterator[tuple[int, int]]:
    """The Node reference server on a free port, pinned to CPU 0; (port, pid)."""
    subprocess.run([str(SUITE.parent.parent / "scripts" / "ensure-conformance")], check=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        ["node", "reference-server.mjs", str(port)],
        cwd=SUITE,
        stdout=subprocess.DEVNULL,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    try:
        wait_listening(port, proc, "reference")
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def appends_per_s(base: str, n: int) -> float:
    url = f"{base}/bench/appends-{uuid.uuid4().hex[:8]}"
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        assert (await http.put(url, headers=OCTET)).status_code == 201
        body = b"x" * 100
        todo = iter(range(n))

        async def producer() -> None:
            for _ in todo:
                response = await http.post(url, content=body, headers=OCTET)
                assert response.status_code in (200, 204), response.status_code

        start = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(16)))
        return n / (time.perf_counter() - start)


async def catch_up_s(base: str) -> float:
    url = f"{base}/bench/catchup-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(timeout=60) as http:
        assert (await http.put(url, headers=OCTET)).status_code == 201
        chunk = os.urandom(CHUNK)
        for _ in range(TEN_MIB // CHUNK):
            assert (await http.post(url, content=chunk, headers=OCTET)).status_code in (200, 204)
        start = time.perf_counter()
        got, offset = 0, "-1"
        while True:
            page = await http.get(url, params={"offset": offset})
            got += len(page.content)
            offset = page.headers["Stream-Next-Offset"]
            if page.headers.get("Stream-Up-To-Date") == "true":
                break
        took = time.perf_counter() - start
        assert got == TEN_MIB, got
        return took


async def kib_per_reader(base: str, pid: int, readers: int) -> float:
    url = f"{base}/bench/idle-{uuid.uuid4().hex[:8]}"
    limits = httpx.Limits(max_connections=readers + 10)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        assert (await http.put(url, headers=OCTET)).status_code == 201
        before = rss_kib(pid)
        params = {"offset": "now", "live": "long-poll"}
        polls = [asyncio.create_task(http.get(url, params=params)) for _ in range(readers)]
        await asyncio.sleep(3)  # a bench, not a test: let every request park
        after = rss_kib(pid)
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        return (after - before) / readers


async def measure(base: str, pid: int, args: argparse.Namespace) -> list[str]:
    rate = await appends_per_s(base, args.appends)
    took = await catch_up_s(base)
    per_reader = await kib_per_reader(base, pid, args.readers)
    return [f"{rate:,.0f}", f"{took * 1000:,.0f} ms ({10 / took:,.0f} MiB/s)", f"{per_reader:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--readers", type=int, default=500)
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})  # the client; each server re-pins itself to CPU 0
    rows = []
    prefix = f"rrbench-ds-{uuid.uuid4().hex[:6]}:"
    with spawn("runrelay", prefix, REDIS_URL) as (port, pid):
        rows.append(
            [
                "runrelay api (Redis)",
                *asyncio.run(measure(f"http://127.0.0.1:{port}/ds", pid, args)),
            ]
        )
    with reference() as (port, pid):
        rows.append(
            [
                "@durable-streams/server 0.3.7 (memory)",
                *asyncio.run(measure(f"http://127.0.0.1:{port}", pid, args)),
            ]
        )
    headers = ["server", "appends/s, one stream", "catch-up of 10 MiB", "KiB per idle long-poll"]
    body = (
        f"`python -m bench.dstreams --appends {args.appends} --readers {args.readers}` on "
        f"{machine()}; both servers pinned to CPU 0, the client on the other core.\n\n"
        + table(headers, rows)
    )
    print(body)
    if args.write:
        write_section("9. Durable Streams", body)


if __name__ == "__main__":
    main()
