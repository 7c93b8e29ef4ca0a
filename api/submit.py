"""Starting a run, the one way every route and dialect does it.

    run, created = await submit_run(state, owner, "story", {"prompt": "a fox"})

The tool and its input are checked against the tool catalogue first (422 naming the
field; nothing stored or queued). Then the run is recorded (its reaper look
scheduled by `Runs.create`) and its request published with the broker's
confirmation before the caller answers. A run whose
request could not be queued is ended `failed` at once, so a request that did reach
the queue finds it over and never runs, and the caller gets `PublishFailed` (503).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from api import metrics
from shared.errors import AppendRefused, BackendUnavailable, PublishFailed
from shared.models import RunRecord, RunStatus

if TYPE_CHECKING:
    from api.deps import ApiState


async def submit_run(
    state: ApiState,
    owner: str,
    tool: str,
    input: Mapping[str, Any],
    *,
    session_id: str | None = None,
    idempotency_key: str | None = None,
    retry_of: str | None = None,
) -> tuple[RunRecord, bool]:
    """Check, record and queue a run; (record, created?): an Idempotency-Key repeat is not
    created again. `retry_of` links a retry to the run it repeats."""
    runtime = state.runtime
    await state.tools.check(tool, input)  # before anything is stored or queued
    run, created = await runtime.runs.create(
        owner=owner,
        tool=tool,
        input=input,
        session_id=session_id,
        idempotency_key=idempotency_key,
        retry_of=retry_of,
    )
    if not created:
        return run, False
    metrics.RUNS_CREATED.labels(tool=tool).inc()
    try:
        await runtime.dispatch.send(run.run_id, run.attempt)
    except (PublishFailed, BackendUnavailable) as exc:
        with contextlib.suppress(AppendRefused, BackendUnavailable):
            await runtime.runs.finish(run, RunStatus.FAILED, error=f"publish_failed: {exc}")
        raise PublishFailed(f"the run could not be queued: {exc}") from exc
    return run, True
