"""`runrelay dev` as a real subprocess on a free port, for end-to-end tests.

dev = await start_dev(processes, tmp_path, {"RUNRELAY_HEARTBEAT_S": "1"})
... dev.url ...
dev.proc.terminate(); assert await dev.proc.wait_async(30) == 0
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.procs import Proc, Processes
from tests.support.wait import wait_for

__all__ = ["REPO", "RUNRELAY", "DevServer", "start_dev"]

REPO = Path(__file__).resolve().parents[2]
RUNRELAY = str(Path(sys.executable).with_name("runrelay"))


@dataclass
class DevServer:
    proc: Proc
    url: str


async def start_dev(
    processes: Processes,
    log_dir: Path,
    env: Mapping[str, str | None],
    *,
    command: Sequence[str] = (RUNRELAY, "dev"),
    cwd: Path | None = None,
    timeout: float = 60.0,  # noqa: ASYNC109 -- a deadline for readiness, not a sleep
    port: int | None = None,
) -> DevServer:
    """Start `command --port <free>`; return once ``/readyz`` answers 200 and the banner is out.

    ``cwd`` defaults to ``log_dir`` so a developer's ``.env`` in the repo is not read;
    `port` (a free one by default) lets a restart keep the address a page has open.
    """
    port = port or free_port()
    proc = processes.spawn(
        [*command, "--port", str(port)],
        {"PORT": None, **env},
        log_path=log_dir / "dev.log",
        cwd=cwd or log_dir,
    )
    url = f"http://127.0.0.1:{port}"

    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:

        async def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"runrelay dev exited with {proc.returncode}\n{proc.output()}")
            try:
                response = await http.get("/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 200 and "dashboard:" in proc.output()

        await wait_for(ready, timeout=timeout, interval=0.1, message="runrelay dev never ready")
    return DevServer(proc, url)
