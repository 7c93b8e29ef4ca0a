"""The checker: what the workload saw against what the event log holds, run by run.

    violations = await check(runtime, workload.runs, published_operations)

Every violation names its run and what broke, filed under one of
lost / duplicated / stuck / wrongly-failed / other:

- the run is terminal, exactly once, and its log is gapless (`run_ended_once`);
- every reader got exactly the log's events after its first cursor, in order, with no
  repeat across its reconnects, and saw the end before the run's deadline;
- every completion the generator published for an operation the run waited for was
  applied once (unless the run was cancelled); none is applied twice;
- a failed run failed for a fault's reason (``worker_lost`` after the last attempt),
  never with a transport's error text;
- a run ends cancelled only when asked to;
- no API process answered a 500 (`server_errors`: the contract's answer is 503).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import NotFound
from shared.runtime import Runtime
from tests.chaos.workload import WorkloadRun
from tests.faults.invariants import log_of, run_ended_once

__all__ = ["CATEGORIES", "Violation", "check", "published_operations", "server_errors"]

CATEGORIES = ("lost", "duplicated", "stuck", "wrongly-failed", "other")

# The reasons a run may fail for under these faults: its worker lost on the last attempt.
FAULT_REASONS = ("worker_lost",)
TRANSPORT_TEXTS = re.compile(
    r"TCPTransport|Connection reset|Error while reading|Connection closed|"
    r"unavailable|Timeout|timed out|BrokenPipe|ConnectionError|RuntimeError",
    re.IGNORECASE,
)
_PUBLISHED = re.compile(r"generator: operation (\S+) completed via queue")


@dataclass
class Violation:
    category: str
    run_id: str
    what: str

    def __str__(self) -> str:
        return f"{self.category:<15} {self.run_id}: {self.what}"


def server_errors(log_dir: Path) -> list[Violation]:
    """Every request an API process answered with a 500 (the contract's answer is a 503)."""
    found: list[Violation] = []
    for path in sorted(log_dir.glob("api-*.log")):
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines):
            if "unhandled error on" in line:
                cause = _exception_of(lines[number + 1 :])
                what = f"{line.split('unhandled error on ', 1)[1]} answered 500: {cause[:200]}"
                found.append(Violation("other", path.name, what))
    return found


def _exception_of(lines: list[str]) -> str:
    """The last exception line of the traceback that `lines` start with."""
    last = ""
    for line in lines:
        if line[:1].isdigit():  # the next log record (timestamped)
            break
        if line and not line[0].isspace() and not line.startswith(("Traceback", "During", "The")):
            last = line
    return last


def published_operations(log_dir: Path) -> set[str]:
    """Operation ids whose completion every generator process published (confirmed)."""
    found: set[str] = set()
    for path in log_dir.glob("generator.*.log"):
        found.update(_PUBLISHED.findall(path.read_text(errors="replace")))
    return found


async def check(
    runtime: Runtime, runs: list[WorkloadRun], published: set[str]
) -> tuple[list[Violation], Counter[str]]:
    """The violations, and counts for the summary (events, statuses)."""
    out: list[Violation] = []
    counts: Counter[str] = Counter()
    for run in runs:
        if run.run_id is None:
            out.append(Violation("other", f"run #{run.index} ({run.tool})", run.create_error or ""))
            continue
        await _check_run(runtime, run, run.run_id, published, out, counts)
    return out, counts


async def _check_run(
    runtime: Runtime,
    run: WorkloadRun,
    run_id: str,
    published: set[str],
    out: list[Violation],
    counts: Counter[str],
) -> None:
    def violation(category: str, what: str) -> None:
        out.append(Violation(category, f"{run_id} ({run.tool})", what))

    try:
        record = await runtime.runs.get(run_id)
    except NotFound:
        violation("lost", "the run is gone from Redis")
        return
    counts[f"status:{record.status.value}"] += 1
    if not record.terminal:
        violation("stuck", f"still {record.status.value} after the deadline")
        return
    try:
        events = await run_ended_once(runtime, run_id)
    except AssertionError as exc:
        events = await log_of(runtime, run_id)
        category = "duplicated" if "terminal events" in str(exc) else "lost"
        violation(category, f"unsound log: {exc}")
    counts["events"] += len(events)
    _check_readers(run, events, violation, counts)
    _check_operations(events, published, record.status.value, violation, counts)
    if record.status.value == "failed":
        error = record.error or ""
        if error == "operation_timeout":
            violation("lost", "no completion applied before operation_timeout: the run failed")
        elif TRANSPORT_TEXTS.search(error):
            violation("wrongly-failed", f"failed with a transport error: {error!r}")
        elif error not in FAULT_REASONS:
            violation("wrongly-failed", f"failed for no fault of ours: {error!r}")
    if record.status.value == "cancelled" and not run.cancel_asked:
        violation("other", "cancelled though nobody asked")
    if run.cancel_error:
        violation("other", run.cancel_error)


def _check_readers(
    run: WorkloadRun, events: list[dict[str, Any]], violation: Any, counts: Counter[str]
) -> None:
    for number, reader in enumerate(run.readers, 1):
        counts["readers"] += 1
        counts["reconnects"] += reader.connections - 1
        expected = [e["id"] for e in events if e["id"] > reader.first_cursor]
        got = reader.ids
        name = f"reader {number} (cursor {reader.first_cursor}, {reader.connections} connections)"
        repeats = sorted(i for i, n in Counter(got).items() if n > 1)
        missing = sorted(set(expected) - set(got))
        if repeats:
            violation("duplicated", f"{name} got ids {repeats[:10]} more than once")
        if missing:
            violation(
                "lost", f"{name} never got ids {missing[:10]}; answers {dict(reader.answers)}"
            )
        if not repeats and not missing and got != expected:
            violation("other", f"{name} got ids out of order: {got[:20]}")
        if not reader.ended:
            violation("stuck", f"{name} saw no end before the deadline: {dict(reader.answers)}")


def _check_operations(
    events: list[dict[str, Any]],
    published: set[str],
    status: str,
    violation: Any,
    counts: Counter[str],
) -> None:
    accepted = [e["data"]["operation_id"] for e in events if e["type"] == "operation.accepted"]
    applied = Counter(
        e["data"].get("operation_id") for e in events if e["type"] == "operation.completed"
    )
    counts["completions applied"] += sum(applied.values())
    for op_id, times in applied.items():
        if times > 1:
            violation("duplicated", f"completion of {op_id} applied {times} times")
    for op_id in accepted:
        if op_id in published and not applied[op_id] and status != "cancelled":
            violation("lost", f"the generator published {op_id}'s completion; never applied")
        if op_id not in published and status == "completed":
            violation("other", f"completed without the generator publishing {op_id}")
