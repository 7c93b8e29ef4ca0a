"""A throwaway haproxy of our own in front of some local servers, started and stopped by pid.

    balancer = Haproxy(processes, tmp_path, [port1, port2, port3])
    await balancer.start()          # listening on balancer.port, round robin
    await balancer.start()          # again: a new haproxy takes the port and the old
                                    # one's connections are cut (`-st <old pid>`)

The config is what an operator would write for an SSE API: HTTP mode, round robin,
long idle timeouts (a stream is quiet between pings), no health checks — a connect
that is refused (a server that is down) is retried on another server instead.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.support.ports import free_port
from tests.support.procs import Proc, Processes
from tests.support.wait import wait_for

__all__ = ["HAPROXY", "Haproxy"]

HAPROXY = os.environ.get("RUNRELAY_TEST_HAPROXY", "/usr/sbin/haproxy")


def _config(port: int, servers: list[int]) -> str:
    backends = "".join(f"    server api{i} 127.0.0.1:{p}\n" for i, p in enumerate(servers))
    return (
        "global\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 1s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        "    timeout tunnel 1h\n"
        # A refused connect (that API is down) is retried, each retry on another server.
        "    retries 3\n"
        "    option redispatch 1\n"
        "frontend api\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend apis\n"
        "backend apis\n"
        "    balance roundrobin\n"
        f"{backends}"
    )


class Haproxy:
    """haproxy on a free port of its own, balancing round robin over `servers`."""

    def __init__(self, processes: Processes, root: Path, servers: list[int]) -> None:
        self.port = free_port()
        self._processes = processes
        self._root = root
        self._config = root / "haproxy.cfg"
        self._config.write_text(_config(self.port, servers))
        self.proc: Proc | None = None
        self._generation = 0

    async def start(self) -> None:
        """Start haproxy and wait until it serves; a running one hands over and is cut off."""
        old = self.proc
        self._generation += 1
        takeover = ["-st", str(old.pid)] if old is not None and old.alive() else []
        proc = self._processes.spawn(
            [HAPROXY, "-db", "-f", str(self._config), *takeover],
            {},
            log_path=self._root / f"haproxy{self._generation}.log",
        )
        self.proc = proc

        async def serving() -> bool:
            if not proc.alive():
                raise AssertionError(f"haproxy exited: {proc.output()}")
            if old is not None and old.alive():
                return False  # the new one signals the old one once it listens
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_for(serving, timeout=10, message="haproxy never served")
