"""The invariant every fault test ends with.

    log = await run_ended_once(runtime, run_id)        # one terminal state, a sound log
    delivered_once(received_ids, log, since=cursor)    # this client got each retained event once

"Retained" is what the run's log still holds: a client whose cursor predates a trim
is told by a ``stream.gap`` frame and then gets the rest, which is what it is
checked against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shared.models import TERMINAL_EVENTS
from shared.runtime import Runtime
from tests.support.wait import wait_for

__all__ = ["all_end", "delivered_once", "log_of", "run_ended_once", "sound_log"]


async def log_of(runtime: Runtime, run_id: str) -> list[dict[str, Any]]:
    """The run's retained events as the log stores them."""
    run = await runtime.runs.get(run_id)
    page = await runtime.log.read(runtime.log.keys.run_log(run.session_id, run_id), 0, 1_000_000)
    return [event.decode() for event in page.events]


def sound_log(events: Sequence[dict[str, Any]]) -> None:
    """Ids strictly increasing with no gap; exactly one terminal event, and it is the last."""
    assert events, "empty log"
    ids = [e["id"] for e in events]
    first = ids[0]
    assert ids == list(range(first, first + len(ids))), f"ids not gapless: {ids}"
    terminal = [e["type"] for e in events if e["type"] in TERMINAL_EVENTS]
    assert len(terminal) == 1, f"terminal events: {terminal}"
    assert events[-1]["type"] in TERMINAL_EVENTS, f"log ends with {events[-1]['type']}"


async def run_ended_once(runtime: Runtime, run_id: str) -> list[dict[str, Any]]:
    """The run is in exactly one terminal state, its record agrees with its log; the log."""
    run = await runtime.runs.get(run_id)
    assert run.terminal, f"run {run_id} is {run.status}"
    events = await log_of(runtime, run_id)
    sound_log(events)
    assert events[-1]["type"] == f"run.{run.status.value}", (run.status, events[-1])
    assert run.last_event_id == events[-1]["id"]
    return events


def delivered_once(
    received: Sequence[int], events: Sequence[dict[str, Any]], *, since: int = 0
) -> None:
    """A client that started after ``since`` received every retained later event once, in order."""
    expected = [e["id"] for e in events if e["id"] > since]
    if received == expected:
        return
    dupes = sorted({i for i in received if list(received).count(i) > 1})
    missing = sorted(set(expected) - set(received))
    raise AssertionError(
        f"delivered {len(received)} of {len(expected)} events after {since}: "
        f"missing {missing[:20]}, repeated {dupes[:20]}, first received {list(received)[:10]}"
    )


async def all_end(
    runtime: Runtime, run_ids: Sequence[str], *, message: str, timeout_s: float = 60.0
) -> None:
    """Wait (up to a minute, or the recovery's own deadline) until every run is terminal."""

    async def ended() -> bool:
        return all([(await runtime.runs.get(run_id)).terminal for run_id in run_ids])

    await wait_for(ended, timeout=timeout_s, interval=0.2, message=message)
