"""`python -m workers` refuses to start with a clear message naming what is wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.procs import Processes
from tests.workers.support import REPO

REDIS, AMQP = "{redis}", "{amqp}"  # the test backends, filled in below


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RUNRELAY_REDIS_URL": None, "RUNRELAY_AMQP_URL": AMQP}, "RUNRELAY_REDIS_URL"),
        ({"RUNRELAY_REDIS_URL": "redis://127.0.0.1:1/0", "RUNRELAY_AMQP_URL": AMQP}, "Redis"),
        ({"RUNRELAY_REDIS_URL": REDIS, "RUNRELAY_AMQP_URL": "amqp://g:g@127.0.0.1:1/"}, "RabbitMQ"),
        (
            {"RUNRELAY_REDIS_URL": REDIS, "RUNRELAY_AMQP_URL": AMQP, "RUNRELAY_TOOLS": "no.such"},
            "RUNRELAY_TOOLS",
        ),
    ],
)
async def test_a_worker_that_cannot_start_says_why(
    env: dict[str, str | None],
    expected: str,
    redis_url: str,
    amqp_url: str,
    processes: Processes,
    tmp_path: Path,
) -> None:
    filled = {k: v and v.format(redis=redis_url, amqp=amqp_url) for k, v in env.items()}
    proc = processes.spawn(
        [sys.executable, "-m", "workers"],
        {"PYTHONPATH": str(REPO), **filled},
        log_path=tmp_path / "worker.log",
        cwd=REPO,
    )
    assert await proc.wait_async(20) != 0
    output = proc.output()
    assert expected in output and "Traceback" not in output, output
