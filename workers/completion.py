"""One completion message → one `Outcome`: the only code that applies an operation's result.

    outcome = await handle_completion(runtime, delivery)

- not JSON, a field missing or of the wrong type → `Reject` naming the field
  (→ `runrelay.dead`).
- operation unknown, or its run not `waiting` yet → `Retry` with backoff for
  ``RUNRELAY_EARLY_COMPLETION_S``, then `Reject`.
- run `waiting` for this operation → `operation.completed` (the run goes back to
  `queued` with the result), a run request published, `Ack`.
- already applied (a duplicate), run ended, run waiting for another operation →
  `Ack`, nothing changes.
- run cancelled → `Ack`, logged and counted ("recorded and ignored").
- an operation id minted by another deployment sharing the broker (its queue got its
  own copy) → `Ack`, counted as `foreign`, never dead-lettered.
- Redis failing → raises `BackendUnavailable`; the broker requeues the message
  without counting a delivery, for as long as the outage lasts (never dead-letters).

The early-completion budget needs no state of its own: the retry delays are a
fixed schedule of the delivery count (`early_delay`), and the broker's TTL
only ever makes a retry later, so the time since the first delivery is at least
the sum of the delays so far.
"""

from __future__ import annotations

import logging

import orjson
from prometheus_client import Counter
from pydantic import ValidationError

from shared import tracing
from shared.broker.base import Ack, Delivery, Outcome, Reject, Retry, operation_tag
from shared.errors import AppendRefused
from shared.models import (
    Operation,
    OperationCompleteMessage,
    RunRecord,
    RunStatus,
    describe_invalid,
)
from shared.runtime import Runtime

log = logging.getLogger(__name__)

FIRST_DELAY_S = 0.2
MAX_DELAY_S = 10.0

COMPLETIONS = Counter(
    "runrelay_completions_total",
    "Completion messages by what became of them: applied, duplicate, ignored_cancelled, "
    "ignored_ended, stale, early (retried), rejected, foreign (another deployment's).",
    ["result"],
)


def early_delay(deliveries: int, budget_s: float, max_deliveries: int) -> float | None:
    """The retry delay for an early completion on its `deliveries`-th delivery; None = give up.

    Doubling from `FIRST_DELAY_S` (an early completion usually beats `operation.accepted`
    by milliseconds); the last retry the broker allows waits out the rest of the budget.
    """
    spent = 0.0
    delay = FIRST_DELAY_S
    for n in range(1, deliveries + 1):
        left = budget_s - spent
        if left <= 0 or n >= max_deliveries:
            return None
        step = left if n == max_deliveries - 1 else min(delay, left)
        if n == deliveries:
            return step
        spent += step
        delay = min(delay * 2, MAX_DELAY_S)
    return None


async def handle_completion(runtime: Runtime, delivery: Delivery) -> Outcome:
    """Validate, find the run, apply the result once; see the module doc for every case."""
    try:
        message = OperationCompleteMessage.model_validate(orjson.loads(delivery.body))
    except orjson.JSONDecodeError:
        COMPLETIONS.labels("rejected").inc()
        return Reject("malformed completion: body is not JSON")
    except ValidationError as exc:
        COMPLETIONS.labels("rejected").inc()
        return Reject(f"malformed completion: {describe_invalid(exc)}")
    tag = operation_tag(message.operation_id)
    if tag is not None and tag != runtime.names.tag:
        COMPLETIONS.labels("foreign").inc()
        log.debug("completion %s belongs to another deployment; ignored", message.operation_id)
        return Ack()
    op = await runtime.store.get_operation(message.operation_id)
    run_id = op.task_id if op is not None else message.task_id
    if op is not None and op.task_id != message.task_id:
        COMPLETIONS.labels("rejected").inc()
        return Reject(
            f"task_id {message.task_id} does not match operation {op.operation_id} "
            f"(which belongs to {op.task_id})"
        )
    run = await runtime.store.get_run(run_id)
    if op is None and (run is None or run.operation_id != message.operation_id):
        return _early(runtime, delivery, message, "unknown operation")
    if run is None:
        # The run's record expired after it ended: nothing left to apply to.
        COMPLETIONS.labels("ignored_ended").inc()
        log.info("completion %s: run %s is gone; ignored", message.operation_id, run_id)
        return Ack()
    # The external service does not carry our trace: the operation record does.
    parent = tracing.context_of(op.trace if op is not None else None)
    with tracing.span("runrelay.complete", {"runrelay.run_id": run_id}, parent=parent):
        return await _apply(runtime, delivery, message, op, run)


async def _apply(
    runtime: Runtime,
    delivery: Delivery,
    message: OperationCompleteMessage,
    op: Operation | None,
    run: RunRecord,
) -> Outcome:
    op_id = message.operation_id
    if run.status == RunStatus.CANCELLED:
        COMPLETIONS.labels("ignored_cancelled").inc()
        log.info("completion %s for cancelled run %s: recorded and ignored", op_id, run.run_id)
        return Ack()
    if run.terminal:
        COMPLETIONS.labels("ignored_ended").inc()
        log.info("completion %s: run %s already %s; ignored", op_id, run.run_id, run.status)
        return Ack()
    if run.applied(op_id):
        COMPLETIONS.labels("duplicate").inc()
        if run.status == RunStatus.QUEUED:
            # Maybe the first copy's publish was lost; a second request is harmless.
            await runtime.dispatch.publish_only(run.run_id, run.attempt)
        return Ack()
    if run.status == RunStatus.WAITING and run.operation_id != op_id:
        COMPLETIONS.labels("stale").inc()
        log.warning(
            "completion %s: run %s waits for operation %s; ignored",
            op_id,
            run.run_id,
            run.operation_id,
        )
        return Ack()
    if run.status != RunStatus.WAITING:
        # Queued or running: the worker has not appended operation.accepted yet.
        return _early(runtime, delivery, message, f"run {run.run_id} is not waiting yet")
    data = {
        "operation_id": op_id,
        "success": message.success,
        "result": message.result,
        "error": message.error,
    }
    try:
        await runtime.dispatch.requeue(
            run.run_id, run.attempt, lambda: runtime.runs.complete_operation(run, op_id, data)
        )
    except AppendRefused:
        # A racing copy (or a cancel) moved the run first: decide again on what it is now.
        fresh = await runtime.store.get_run(run.run_id)
        if fresh is None or fresh.status == RunStatus.WAITING:
            raise
        return await _apply(runtime, delivery, message, op, fresh)
    COMPLETIONS.labels("applied").inc()
    log.info("completion %s applied to run %s", op_id, run.run_id)
    return Ack()


def _early(
    runtime: Runtime, delivery: Delivery, message: OperationCompleteMessage, why: str
) -> Outcome:
    settings = runtime.settings
    delay = early_delay(
        delivery.deliveries, settings.early_completion_s, settings.completion_max_redeliveries
    )
    if delay is None:
        COMPLETIONS.labels("rejected").inc()
        return Reject(
            f"{why}: operation {message.operation_id} (task {message.task_id}) not found "
            f"waiting within RUNRELAY_EARLY_COMPLETION_S={settings.early_completion_s:g}"
        )
    COMPLETIONS.labels("early").inc()
    return Retry(delay, f"{why}: operation {message.operation_id}")
