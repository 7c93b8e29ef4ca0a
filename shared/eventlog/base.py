"""The store interfaces: primitives only; lifecycle policy lives in `shared.lifecycle`.

Four narrow Protocols, one concept each, each with a Redis and an embedded backend
and a contract suite over both (tests/contract/):

- `EventLog`: per run an append-only log of events (and per session a log that
  interleaves its runs' events), appended by one conditional step that also moves
  the run's status; reads after a cursor; waits for news.
- `RunStore`: run records, idempotency keys, the owner's active runs, operations.
- `Scheduler`: when the reaper looks at a run again.
- `WorkerRegistry`: the live workers, and those that left within the last hour.

Events arrive pre-encoded (see `encode_body`); the backend only prefixes the id it
assigns, so every reader gets the same bytes and nobody re-encodes. The run record
is a hash of strings in both backends; `record_from` is the one place that reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from shared.errors import RunRelayError
from shared.eventlog.streams import StreamStore
from shared.keys import Keys
from shared.models import Operation, Page, RunHead, RunRecord, RunStatus, StoredEvent


def encode_body(
    run_id: str, session_id: str, type_: str, data: Mapping[str, Any], at: str
) -> bytes:
    """The event's JSON minus its opening ``{"id":N,`` which the backend adds on append."""
    full = orjson.dumps(
        {"run_id": run_id, "session_id": session_id, "type": type_, "data": data, "created_at": at}
    )
    return full[1:]


@dataclass(frozen=True, slots=True)
class Transition:
    """The condition and effect of one conditional append, decided by lifecycle policy.

    The append happens only if the run exists, is not terminal, its status is in
    `allowed_from` (empty = any non-terminal) and each `expect` field has the given
    value. Then `to` (if set) becomes the status and `fields` are written.
    """

    allowed_from: frozenset[str] = frozenset()
    to: str | None = None
    terminal: bool = False
    expect: Mapping[str, str] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Batch:
    """Events of one run to append in one atomic step under one rule (see `append_batches`).

    `events` are ``(type, body)`` pairs, bodies from `encode_body`. A terminal `rule`
    ends the run after the last of them.
    """

    owner: str
    session_id: str
    run_id: str
    events: Sequence[tuple[str, bytes]]
    rule: Transition


class Cursors(dict[str, int]):
    """`EventLog.wait`'s read positions as a reader that waits again and again passes
    them (the API's tail hub): with what changed since its wait numbered `since`. This
    wait is number `seq`; `added` are the keys it began to follow since, or began to
    follow again (a client that came back: read them at once, even if a backend still
    watches them), `removed` those it stopped following.

    A backend keeping state per key (the Redis change feed's subscriptions) applies
    these instead of comparing every key, when `since` is the last wait it saw; any
    other wait (or a plain mapping) it compares in full. A plain mapping is what other
    callers pass, and it means what it says: these keys at these positions.
    """

    __slots__ = ("added", "removed", "seq", "since")

    def __init__(
        self,
        cursors: Mapping[str, int],
        *,
        seq: int,
        since: int,
        added: frozenset[str],
        removed: frozenset[str],
    ) -> None:
        super().__init__(cursors)
        self.seq = seq
        self.since = since
        self.added = added
        self.removed = removed


class EventLog(Protocol):
    """Run logs: the conditional append that also moves the run, reads after a cursor, waits.

    Every method is one atomic step on the backend. Closing the log closes the backend
    (the other stores share its connections).
    """

    keys: Keys

    async def ping(self) -> None:
        """Raise `BackendUnavailable` if the store cannot be reached."""

    async def close(self) -> None: ...

    async def create_run(
        self, fields: Mapping[str, str], first_type: str, first_body: bytes
    ) -> None:
        """Store a new run (fields include run_id, session_id, owner, status) and its first event.

        Raises `Conflict` if the run id exists. Sessions are per owner, so another
        owner's session of the same id is simply a different session.
        """

    async def append(
        self, owner: str, session_id: str, run_id: str, type_: str, body: bytes, rule: Transition
    ) -> int:
        """Append one event if `rule` allows it; return its id.

        Raises `NotFound` for a missing run, `AppendRefused` when the rule refuses.
        """

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | RunRelayError]:
        """Append each batch atomically (all its events, consecutive ids, or none); per
        batch its last id, or the error that refused it (`AppendRefused`, `NotFound`,
        `BackendUnavailable`). The status and `rule` are checked once per batch. Batches
        of different runs share round trips; give at most one batch per run per call.

        Raises `BackendUnavailable` when the call as a whole failed.
        """

    async def read(self, log_key: str, after: int, limit: int) -> Page:
        """Up to `limit` events with id > `after`, plus the log's first and last ids."""

    async def wait(
        self, cursors: Mapping[str, int], timeout_s: float, count: int
    ) -> dict[str, list[StoredEvent]]:
        """Block until some log has events past its cursor (or timeout); return them.

        May return early and empty (then wait again). `cursors` may be `Cursors`."""

    async def wake(self, wake_key: str) -> None:
        """Make a `wait` that includes `wake_key` return now (used to add logs to a wait)."""

    async def idle(self) -> None:
        """The waiter follows nothing now: release what waiting holds (connections, tasks)."""

    async def append_topic(self, owner: str, topic: str, type_: str, body: bytes) -> int:
        """Append to a topic's log (a log without a run); return the id."""


class RunStore(Protocol):
    """Run records and what is looked up beside them: idempotency keys, the owner's
    active runs, operations. Every method is one atomic step on the backend."""

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def get_head(self, run_id: str) -> RunHead | None:
        """`get_run`'s owner, session, status and last event id only (a stream's open)."""

    async def update_run(
        self, run_id: str, expect: Mapping[str, str], fields: Mapping[str, str]
    ) -> tuple[bool, RunRecord | None]:
        """Compare-and-set run fields without an event: (applied, record after)."""

    async def list_runs(
        self, owner: str, session_id: str | None, limit: int, offset: int
    ) -> list[RunRecord]:
        """The owner's runs, newest first (optionally within one session)."""

    async def session_exists(self, owner: str, session_id: str) -> bool:
        """Whether `owner` has a (retained) session of this id."""

    async def claim_idempotency(self, owner: str, key: str, run_id: str, ttl_s: int) -> str:
        """Bind key -> run_id unless bound already; return the bound run id."""

    async def admit_active(self, owner: str, run_id: str, limit: int) -> bool:
        """Add `run_id` to the owner's active runs unless they hold `limit` already."""

    async def drop_active(self, owner: str, run_ids: Sequence[str]) -> None:
        """Remove runs from the owner's active runs (ended, or never created)."""

    async def active_runs(self, owner: str, limit: int) -> list[str]:
        """Up to `limit` of the owner's active run ids, oldest first."""

    async def put_operation(self, op: Operation, ttl_s: int) -> bool:
        """Record an operation; False if that id is already recorded."""

    async def get_operation(self, operation_id: str) -> Operation | None: ...


class Scheduler(Protocol):
    """When the reaper should look at a run again (its lease end, its publish grace)."""

    async def schedule(self, run_id: str, due: float) -> None:
        """Ask the reaper to look at this run at `due` (unix time); replaces any earlier due."""

    async def due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` run ids whose time has come, earliest first."""

    async def unschedule(self, run_id: str) -> None: ...


class WorkerRegistry(Protocol):
    """The workers alive now, from their heartbeats, and for `WORKER_HISTORY_S` after
    they left: removed (a clean stop) or lost (the heartbeat ran out)."""

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl_s: float) -> None:
        """`worker_id` is alive for `ttl_s` more seconds; `info` is what `live` shows of it.

        Also forgets the workers that left more than `WORKER_HISTORY_S` ago."""

    async def remove(self, worker_id: str) -> None:
        """`worker_id` left cleanly now: no longer live, remembered as ``clean``."""

    async def advertise_tools(self, tools: Sequence[Mapping[str, Any]], now: float) -> None:
        """Record that a worker serves `tools` (dicts with a ``name``) as of `now`.

        Kept by name, the latest advertisement winning, and not removed when the worker
        leaves: the API remembers a tool for a while so a worker restart is not an outage.
        """

    async def list_tools(self, since: float) -> list[dict[str, Any]]:
        """The tools advertised at or after `since`, each with its ``last_seen``, by name."""

    async def live(self) -> list[dict[str, Any]]:
        """The info of every worker whose last heartbeat has not run out."""

    async def recent(self, since: float) -> list[dict[str, Any]]:
        """Every worker live at or after `since` (at most `WORKER_HISTORY_S` back), latest
        heartbeat first: its info plus ``left`` (None while live, ``clean`` after `remove`,
        ``lost`` when its heartbeat ran out) and ``left_at`` (when, or None)."""


# How long the registry remembers a worker after it left: the console's worker history.
WORKER_HISTORY_S = 3600.0


def worker_history(
    entries: Iterable[tuple[Mapping[str, Any], float]], since: float, now: float
) -> list[dict[str, Any]]:
    """`WorkerRegistry.recent` from each worker's stored (info, live-until), both backends.

    `remove` marks the info ``left: clean`` and sets live-until to the moment it left, so a
    worker past its live-until without that mark was lost when its heartbeat ran out."""
    out: list[dict[str, Any]] = []
    for info, until in entries:
        if until < since:
            continue
        if info.get("left"):
            out.append({**info, "left_at": until})
        elif until > now:
            out.append({**info, "left": None, "left_at": None})
        else:
            out.append({**info, "left": "lost", "left_at": until})
    out.sort(key=lambda w: float(w.get("last_seen") or 0.0), reverse=True)
    return out


@dataclass(frozen=True, slots=True)
class Stores:
    """One backend's stores, sharing its connections."""

    log: EventLog
    runs: RunStore
    scheduler: Scheduler
    workers: WorkerRegistry
    streams: StreamStore


def record_from(fields: Mapping[str, str]) -> RunRecord:
    """The run record stored as a hash of strings (both backends store it so)."""

    def opt(name: str) -> str | None:
        return fields.get(name) or None

    lease = opt("lease_until")
    result = opt("operation_result")
    return RunRecord(
        run_id=fields["run_id"],
        session_id=fields["session_id"],
        owner=fields["owner"],
        tool=fields["tool"],
        input=orjson.loads(fields.get("input", "{}")),
        status=RunStatus(fields["status"]),
        attempt=int(fields.get("attempt", "1")),
        created_at=fields["created_at"],
        updated_at=fields.get("updated_at", fields["created_at"]),
        started_at=opt("started_at"),
        finished_at=opt("finished_at"),
        last_event_id=int(fields.get("last_event_id", "0")),
        error=opt("error"),
        worker=opt("worker"),
        cancel_requested=fields.get("cancel_requested") == "1",
        lease_until=float(lease) if lease else None,
        operation_id=opt("operation_id"),
        operation_result=orjson.loads(result) if result else None,
        retry_of=opt("retry_of"),
    )
