"""The workload: runs created at a steady rate, each watched by 1-3 raw SSE readers.

    workload = Workload(balancer_port, random.Random(seed), rate=1.0, deadline_s=90)
    await workload.create_until(stop)    # returns when `stop` is set
    await workload.drain()               # every reader finished or gave up at its deadline
    workload.runs                        # what each run and reader saw, for the checker

A reader reconnects with ``Last-Event-ID`` (its last id) whenever its stream is cut,
refused, answered with an error, or silent past the idle timeout, and gives up only at
the run's deadline. Creation retries a request that got no answer with the same
Idempotency-Key (the first may have created the run), and after a 503 with a new one.
Some runs are cancelled a moment after creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.faults.conftest import ALICE
from tests.faults.rawsse import read_stream

__all__ = ["Reader", "Workload", "WorkloadRun"]

TOOLS = ("story", "countdown", "generate_agent")
CANCEL_SHARE = 0.1
IDLE_TIMEOUT_S = 5.0  # the API pings every second; 5 s of nothing is a dead connection
RETRY_PAUSE_S = 0.2


def tool_input(tool: str, index: int) -> dict[str, Any]:
    if tool == "story":
        return {"prompt": f"chaos run {index}", "paragraphs": 2, "delay_ms": 40}
    if tool == "countdown":
        return {"seconds": 2, "interval_s": 0.2}
    return {"instructions": f"an agent for chaos run {index}"}


@dataclass
class Reader:
    first_cursor: int
    ids: list[int] = field(default_factory=list)
    connections: int = 0
    ended: bool = False
    answers: Counter[str] = field(default_factory=Counter)  # "200", "503", "reset", "idle", …


@dataclass
class WorkloadRun:
    index: int
    tool: str
    run_id: str | None = None
    create_failures: Counter[str] = field(default_factory=Counter)
    create_error: str | None = None  # an answer no client should get (a 500, a 4xx)
    readers: list[Reader] = field(default_factory=list)
    cancel_asked: bool = False
    cancel_error: str | None = None


class Workload:
    def __init__(self, port: int, rng: random.Random, *, rate: float, deadline_s: float) -> None:
        self.port = port
        self.rng = rng
        self.rate = rate
        self.deadline_s = deadline_s
        self.runs: list[WorkloadRun] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {ALICE}"},
            timeout=httpx.Timeout(10.0),
        )

    async def create_until(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        while not stop.is_set():
            now = loop.time()
            run = WorkloadRun(index, self.rng.choice(TOOLS))
            self.runs.append(run)
            self._spawn(self._life(run, now + self.deadline_s))
            index += 1
            # A steady schedule from the start, so slow creations do not lower the rate.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, start + index / self.rate - now))

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        await self._http.aclose()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _life(self, run: WorkloadRun, deadline: float) -> None:
        run.run_id = await self._create(run, deadline)
        if run.run_id is None:
            return
        for _ in range(self.rng.randint(1, 3)):
            # Most readers start at the beginning; some resume from the run.queued event.
            reader = Reader(first_cursor=self.rng.choice((0, 0, 1)))
            run.readers.append(reader)
            self._spawn(self._read(run.run_id, reader, self.rng.uniform(0, 1.5), deadline))
        if self.rng.random() < CANCEL_SHARE:
            self._spawn(self._cancel(run, self.rng.uniform(0.1, 2.0), deadline))

    async def _create(self, run: WorkloadRun, deadline: float) -> str | None:
        loop = asyncio.get_running_loop()
        body = {"tool": run.tool, "input": tool_input(run.tool, run.index)}
        key = uuid.uuid4().hex
        while loop.time() < deadline:
            try:
                response = await self._http.post(
                    "/v1/runs", json=body, headers={"Idempotency-Key": key}
                )
            except httpx.HTTPError as exc:
                run.create_failures[type(exc).__name__] += 1
            else:
                if response.status_code in (200, 202):
                    run_id: str = response.json()["run_id"]
                    return run_id
                run.create_failures[str(response.status_code)] += 1
                if response.status_code != 503:
                    run.create_error = f"POST /v1/runs: {response.status_code} {response.text}"
                    return None
                key = uuid.uuid4().hex  # that run was refused (and ended); ask anew
            await asyncio.sleep(RETRY_PAUSE_S)  # pacing between attempts
        run.create_error = f"not created before its deadline: {dict(run.create_failures)}"
        return None

    async def _read(self, run_id: str, reader: Reader, delay_s: float, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay_s)  # readers arrive at random moments
        path = f"/v1/runs/{run_id}/events"
        while not reader.ended and loop.time() < deadline:
            cursor = reader.ids[-1] if reader.ids else reader.first_cursor
            reader.connections += 1
            try:
                async with asyncio.timeout(max(0.1, deadline - loop.time())):
                    result = await read_stream(
                        self.port,
                        path,
                        token=ALICE,
                        cursor=cursor or None,
                        idle_timeout_s=IDLE_TIMEOUT_S,
                    )
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                reader.answers[type(exc).__name__] += 1
            except TimeoutError:
                reader.answers["deadline"] += 1
                return
            else:
                reader.ids += result.ids
                reader.ended = result.ended or result.status == 204
                reader.answers["idle" if result.idle else str(result.status)] += 1
                reader.answers.update(f"error:{e.get('code')}" for e in result.errors)
                if reader.ended:
                    return
            await asyncio.sleep(RETRY_PAUSE_S)  # pacing between reconnects

    async def _cancel(self, run: WorkloadRun, delay_s: float, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(delay_s)  # cancelled at a random moment of its life
        run.cancel_asked = True
        while loop.time() < deadline:
            try:
                response = await self._http.post(f"/v1/runs/{run.run_id}/cancel")
            except httpx.HTTPError:
                pass
            else:
                if response.status_code in (200, 409):
                    return
                if response.status_code != 503:
                    run.cancel_error = f"cancel: {response.status_code} {response.text}"
                    return
            await asyncio.sleep(RETRY_PAUSE_S)  # pacing between attempts
        run.cancel_error = "cancel never answered before the run's deadline"
