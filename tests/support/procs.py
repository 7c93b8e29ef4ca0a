"""Subprocesses that tests start and always clean up, by pid (never by name).

def test_x(processes, tmp_path):
    api = processes.spawn(["runrelay", "api", "--port", "0"], {"RUNRELAY_...": "..."},
                          log_path=tmp_path / "api.log")
    api.kill9()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

__all__ = ["Proc", "Processes", "running_processes", "spawn"]


class Proc:
    """A process in its own session (so its children share its process group)."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, log: IO[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self._log = log

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process (a crash: no cleanup, no goodbye)."""
        self._signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM: the process should shut down cleanly."""
        self._signal(signal.SIGTERM)

    def interrupt(self) -> None:
        self._signal(signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """Block until the process exits; raises subprocess.TimeoutExpired."""
        return self.popen.wait(timeout)

    async def wait_async(self, timeout: float, interval: float = 0.02) -> int:  # noqa: ASYNC109
        """Poll until the process exits, without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (code := self.popen.poll()) is None:
            if loop.time() >= deadline:
                raise AssertionError(
                    f"pid {self.pid} still running after {timeout}s\n{self.output()}"
                )
            await asyncio.sleep(interval)
        return code

    def output(self) -> str:
        """What the process wrote so far (stdout and stderr)."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def cleanup(self, timeout: float = 5.0) -> None:
        """Kill the whole process group if anything is left, reap, close the log."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        self._log.close()

    def _signal(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, sig)


def spawn(
    args: list[str],
    env: Mapping[str, str | None],
    *,
    log_path: Path | str,
    cwd: Path | str | None = None,
) -> Proc:
    """Start ``args`` with ``env`` laid over the current environment (a None value
    removes a variable); stdout and stderr go to ``log_path``."""
    full_env = dict(os.environ)
    for key, value in env.items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.open("ab")
    try:
        popen = subprocess.Popen(
            args,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    return Proc(popen, path, log)


class Processes:
    """Spawns processes and kills every one of them (by pid) at the end."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def spawn(
        self,
        args: list[str],
        env: Mapping[str, str | None],
        *,
        log_path: Path | str,
        cwd: Path | str | None = None,
    ) -> Proc:
        proc = spawn(args, env, log_path=log_path, cwd=cwd)
        self.procs.append(proc)
        return proc

    def cleanup(self) -> None:
        for proc in reversed(self.procs):
            proc.cleanup()
        self.procs.clear()


@contextlib.contextmanager
def running_processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.cleanup()
