"""Data shapes shared by every process: statuses, run records, events, broker messages."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError

ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_ID_RE = re.compile(ID_PATTERN)
Ident = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


def valid_id(value: str) -> bool:
    """Ids appear in Redis keys and hash tags, so they are a safe, bounded alphabet."""
    return bool(_ID_RE.match(value))


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def utcnow() -> str:
    """Now as ISO 8601 UTC with microseconds, e.g. ``2026-12-01T09:14:23.690123Z``.

    Microseconds, because every event's ``created_at`` is stamped here when it is
    emitted and end-to-end latency is measured from it. The date part is formatted
    once per second: `datetime.isoformat` was 20% of a busy worker's CPU.
    """
    now = time.time()
    sec = int(now)
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((now - sec) * 1_000_000):06d}Z"


def seconds_since(iso: str) -> float:
    """Seconds from an ISO timestamp (as `utcnow` writes them) to now."""
    return (
        datetime.now(UTC).timestamp()
        - datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    )


def describe_invalid(exc: ValidationError) -> str:
    """``field: why`` for each problem, so an error message names the field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "input"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})
TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})


class StoredEvent(NamedTuple):
    """One event as the log keeps it: its id, its type and its JSON, encoded once."""

    id: int
    type: str
    json: bytes

    def decode(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.json)
        return value


# The most events a reader asks of one log at once: a replay page, a live read per log.
PAGE_SIZE = 500


class Gap(NamedTuple):
    """Events `first`..`last` were trimmed or expired before the reader got to them."""

    first: int
    last: int


class Page(NamedTuple):
    """Events after a cursor, plus what the log still holds (for gap reporting)."""

    events: list[StoredEvent]
    first_id: int  # oldest retained id, 0 when the log is empty or gone
    last_id: int  # newest id ever appended, 0 when none

    def gap(self, cursor: int, upto: int | None = None) -> Gap | None:
        """What is gone between `cursor` (the page was read after it) and this page.

        Ids are gapless, so a first event past ``cursor + 1`` means the ids in between
        were trimmed or expired. A reader filling a hole up to `upto` that finds nothing
        at or below it has lost the whole hole.
        """
        first = self.events[0].id if self.events else None
        if upto is not None and (first is None or first > upto):
            return Gap(cursor + 1, upto)
        if first is not None and first > cursor + 1:
            return Gap(cursor + 1, first - 1)
        return None


class PublicRun(BaseModel):
    """The run as its owner sees it (`GET /v1/runs/{id}`)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    session_id: str
    tool: str
    input: dict[str, Any]
    status: RunStatus
    attempt: int
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    last_event_id: int = 0
    error: str | None = None
    worker: str | None = None
    cancel_requested: bool = False
    retry_of: str | None = Field(default=None, description="the run this one retries")


_PRIVATE = frozenset({"owner", "lease_until", "operation_id", "operation_result"})


class RunRecord(PublicRun):
    """The stored run: what its owner sees, plus who that is and the workers' bookkeeping."""

    owner: str
    lease_until: float | None = None  # unix time; set while a worker holds the run
    operation_id: str | None = None  # the operation the run waits for, or last waited for
    operation_result: dict[str, Any] | None = None  # that operation's completion, once applied

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    def applied(self, operation_id: str) -> bool:
        """Whether `operation_id`'s completion is already on the record."""
        return self.operation_id == operation_id and self.operation_result is not None

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude=set(_PRIVATE))


class RunHead(NamedTuple):
    """What opening a run's stream needs of its record: whose it is, where its log is,
    and how far it got. Read on every connect, so it is four fields, not the record
    (whose decoding and validation were about 4% of a connect wave's CPU)."""

    run_id: str
    session_id: str
    owner: str
    status: RunStatus
    last_event_id: int

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class RunRequestMessage(BaseModel):
    """The AMQP message on `runrelay.runs` (the run record itself lives in Redis)."""

    model_config = ConfigDict(extra="ignore")

    run_id: Ident
    attempt: int = Field(ge=1)


class OperationCompleteMessage(BaseModel):
    """The external completion contract on `chat_operation_complete` (names fixed by SPEC §6)."""

    model_config = ConfigDict(extra="ignore")

    operation_id: Ident
    task_id: Ident
    success: StrictBool
    result: dict[str, Any] | list[Any] | str | int | float | None = None
    error: str | None = None


class Operation(BaseModel):
    """A delegated piece of work and the run it belongs to."""

    operation_id: str
    task_id: str  # the run id
    session_id: str
    tool_call_id: str
    tool_name: str
    # The W3C trace context of the run when the operation started (empty: not traced).
    trace: dict[str, str] = Field(default_factory=dict)
