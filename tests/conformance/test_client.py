"""The official TypeScript client (`@durable-streams/client`) follows a runrelay run to its
end while a proxy cuts its connections mid-stream.

`read_run.mjs` uses the client's own resume logic (offsets, retries); the test only
breaks the network and then checks what the client delivered against the run's log:
every event exactly once, in order, and the stream reported closed at the terminal
event's offset.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from api.ds.protocol import offset
from tests.conformance.conftest import MakeRunSystem, ensure_node_packages
from tests.faults.conftest import ALICE, post_run
from tests.support.procs import Proc, Processes
from tests.support.proxy import FaultProxy
from tests.support.wait import wait_for

pytestmark = pytest.mark.timeout(90)
HERE = Path(__file__).parent
# ~60 events over 3 s: long enough for every fault to land while the run streams.
COUNTDOWN = {"seconds": 3.0, "interval_s": 0.05}


def delivered(client: Proc) -> list[bytes]:
    return [line[5:] for line in client.output().encode().splitlines() if line.startswith(b"item ")]


@pytest.mark.parametrize("live", ["sse", pytest.param("long-poll", marks=pytest.mark.slow)])
async def test_the_official_client_reads_a_run_to_its_close_across_cut_connections(
    run_system: MakeRunSystem, processes: Processes, tmp_path: Path, live: str
) -> None:
    ensure_node_packages()
    node = shutil.which("node")
    assert node is not None
    async with run_system() as system, FaultProxy(system.port) as proxy:
        run_id = await post_run(system.port, "countdown", COUNTDOWN)
        url = f"http://127.0.0.1:{proxy.port}/ds/runs/{run_id}"
        client = processes.spawn(
            [node, "read_run.mjs", url, ALICE, live], {}, log_path=tmp_path / "client.log", cwd=HERE
        )

        async def reached(n: int) -> None:
            async def has() -> bool:
                assert client.alive() or len(delivered(client)) >= n, client.output()
                return len(delivered(client)) >= n

            await wait_for(has, timeout=20, interval=0.02, message=f"client never had {n}")

        # Two resets while it reads live, then the next three connections cut after 700
        # bytes each (mid-response: headers and part of an event).
        for n in (10, 25):
            await reached(n)
            assert await proxy.cut_all() >= 1
        await reached(35)
        proxy.cut_after_bytes(700, times=3)
        code = await client.wait_async(timeout=60)
        assert code == 0, client.output()
        await system.ended(run_id)
        logged = await system.logged(run_id)
        got = [orjson.loads(item) for item in delivered(client)]
        assert got == [orjson.loads(e.json) for e in logged]
        assert f"closed {offset(logged[-1].id)}" in client.output().splitlines()
