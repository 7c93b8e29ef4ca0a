"""A private redis-server on a free port, for tests that kill or restart Redis.

    with ThrowawayRedis() as node:
        settings = make_settings(redis_url=node.url)
        node.stop()    # SIGKILL: Redis is gone
        node.start()   # back on the same port, empty

Never touches the shared Redis on 6379.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.support.ports import free_port


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class ThrowawayRedis:
    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout: float = 10.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="rrtest-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> ThrowawayRedis:
        if self.running:
            return self
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "ThrowawayRedis needs redis-server on PATH (apt-get install redis-server)"
            )
        log = (self.dir / "redis.log").open("ab")
        # redis-server holds its own copy of the fd; ours can go right away.
        with log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while not _pings(self.port):
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                log_text = (self.dir / "redis.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log_text}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGKILL by pid (a crash: nothing saved, clients see a dead socket)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
