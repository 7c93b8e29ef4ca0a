"""Durable Streams request path: runrelay and the Node reference server under wrk, same run.

    python -m bench.dswrk [--rounds 2] [--duration 10] [--connections 16] [--only append1,...]

Each server is a child process pinned to CPU 0 (runrelay through `bench.servers`, the
reference by `taskset`), wrk runs on CPU 1. Scenarios, each on a fresh set of streams:

- ``append1``: POST 100 bytes (octet-stream) to one stream;
- ``append100``: the same spread over 100 streams (`bench/wrk/post_many.lua`);
- ``now``: ``GET ?offset=now`` of a stream (the per-request cost of a read);
- ``catchup``: ``GET ?offset=-1`` of a 10 MiB stream (1 KiB messages), wrk on the first
  response; and the whole stream read from ``-1`` following ``Stream-Next-Offset`` (MiB/s,
  median of 5).

``--servers before,runrelay,reference --base DIR`` adds the runrelay of another checkout
(e.g. a worktree of main) as ``before``, for before/after figures in the same run.
Needs `wrk` (Debian package), node with `scripts/ensure-conformance` done, Redis.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from bench.keys import REDIS_URL, forget
from bench.report import machine

ROOT = Path(__file__).resolve().parent.parent
WRK = ROOT / "bench" / "wrk"
SCENARIOS = ("append1", "append100", "now", "catchup")
CATCHUP_BYTES = 10 * 1024 * 1024
MESSAGE = 1024
last_transfer_mib_s = 0.0  # of the last wrk run
PREFIXES: list[str] = []  # the runrelay servers' key prefixes, deleted at the end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            httpx.head(url + "/ds/__probe", timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start(kind: str, base: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    if kind in ("runrelay", "before"):
        env = {**os.environ, "RUNRELAY_ALLOW_ANONYMOUS": "1"}
        prefix = f"dswrk-{uuid.uuid4().hex[:8]}:"
        PREFIXES.append(prefix)
        cmd = [sys.executable, "-m", "bench.servers", "runrelay", "--port", str(port)]
        cmd += ["--prefix", prefix]
        # "before": the same bench.servers in another checkout (its code first on sys.path).
        cwd = ROOT if kind == "runrelay" else Path(base)
        proc = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=cwd, env=env)
    else:
        script = ROOT / "tests" / "conformance" / "reference-server.mjs"
        proc = subprocess.Popen(
            ["taskset", "-c", "0", "node", str(script), str(port)],
            cwd=script.parent,
            stdout=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    wait_up(url)
    return proc, url


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, script: str | None, duration: int, connections: int, pid: int
) -> tuple[float, float, float]:
    """(requests/s, mean latency ms, server CPU µs per request) of one wrk run; non-2xx
    answers fail the run. CPU per request holds up better than requests/s on a machine
    shared with other work."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
    if script:
        cmd += ["-s", str(WRK / script)]
    before = cpu_s(pid)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    used = cpu_s(pid) - before
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    assert lat is not None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[lat.group(2)]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    global last_transfer_mib_s
    moved = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    assert moved is not None
    unit = {"B": 1 / (1 << 20), "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[moved.group(2)]
    last_transfer_mib_s = float(moved.group(1)) * unit
    return rps, float(lat.group(1)) * scale, used / count * 1e6


def put(client: httpx.Client, url: str) -> None:
    r = client.put(url, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code in (200, 201), r.status_code


def fill(client: httpx.Client, url: str) -> None:
    put(client, url)
    body = b"y" * MESSAGE
    for _ in range(CATCHUP_BYTES // MESSAGE):
        r = client.post(url, content=body, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code in (200, 204), r.status_code


def catch_up(client: httpx.Client, url: str) -> float:
    """Seconds to read the whole stream from -1 to Stream-Up-To-Date."""
    started = time.perf_counter()
    offset, got = "-1", 0
    while True:
        r = client.get(url, params={"offset": offset})
        assert r.status_code == 200, r.status_code
        got += len(r.content)
        offset = r.headers["Stream-Next-Offset"]
        if r.headers.get("Stream-Up-To-Date") == "true":
            break
    assert got == CATCHUP_BYTES, got
    return time.perf_counter() - started


def run_scenario(
    kind: str, proc: subprocess.Popen[bytes], url: str, name: str, args: argparse.Namespace
) -> str:
    tag = uuid.uuid4().hex[:6]
    conns, pid = args.connections, proc.pid

    def show(rps: float, lat: float, cpu: float) -> str:
        return f"{rps:7.0f} req/s {lat:7.2f} ms {cpu:6.0f} us CPU/req"

    with httpx.Client(timeout=60.0) as client:
        if name == "append1":
            put(client, f"{url}/ds/a{tag}")
            return show(*wrk(f"{url}/ds/a{tag}", "post.lua", args.duration, conns, pid))
        if name == "append100":
            for i in range(100):
                put(client, f"{url}/ds/m{tag}-{i}")
            return show(*wrk(f"{url}/ds/m{tag}-", "post_many.lua", args.duration, conns, pid))
        if name == "now":
            put(client, f"{url}/ds/n{tag}")
            return show(*wrk(f"{url}/ds/n{tag}?offset=now", None, args.duration, conns, pid))
        stream = f"{url}/ds/c{tag}"
        fill(client, stream)
        times = [catch_up(client, stream) for _ in range(5)]
        mib_s = CATCHUP_BYTES / (1 << 20) / statistics.median(times)
        first = show(*wrk(f"{stream}?offset=-1", None, args.duration, 4, pid))
        moved = f"{last_transfer_mib_s:.0f} MiB/s"
        return f"{first} {moved} (first page, 4 conns); whole from -1: {mib_s:6.1f} MiB/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument(
        "--servers", default="runrelay,reference", help="of runrelay, before, reference"
    )
    parser.add_argument("--base", default="", help="the checkout `before` runs, e.g. main's")
    args = parser.parse_args()
    print(machine())
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load", os.getloadavg())
    kinds = args.servers.split(",")
    procs = {k: start(k, args.base) for k in kinds}
    try:
        for rnd in range(1, args.rounds + 1):
            for name in args.only.split(","):
                for kind in kinds:
                    figure = run_scenario(kind, *procs[kind], name, args)
                    load = os.getloadavg()[0]
                    print(f"round {rnd} {name:9} {kind:9} {figure}  (load {load:.1f})", flush=True)
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)
        for prefix in PREFIXES:
            forget(REDIS_URL, prefix)


if __name__ == "__main__":
    main()
