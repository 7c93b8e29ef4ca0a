"""Run lifecycle policy: which event may follow which status, decided once, above the backends.

    queued ──run.started──▶ running ──operation.accepted──▶ waiting
      ▲ ▲                     │                                 │
      │ └─────run.retrying────┘                                 │
      └──────────operation.completed (result on the record)─────┘
    any non-terminal ──run.completed | run.failed | run.cancelled──▶ terminal (exactly once)

Every transition is one conditional append (`EventLog.append` with a `Transition`),
so the event and the status change can never disagree, and of two racing terminal
events exactly one is stored. Events a worker appends carry the worker id and the
attempt as expectations, so a worker that lost its lease cannot write into a run
that another worker has taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from shared.errors import AppendRefused, BadRequest, Conflict, NotFound, TooManyRuns
from shared.eventlog.base import Stores, Transition, encode_body, record_from
from shared.flights import Flights
from shared.models import RunHead, RunRecord, RunStatus, utcnow, valid_id

_ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})
_RUNNING = frozenset({RunStatus.RUNNING.value})
_WAITING = frozenset({RunStatus.WAITING.value})
_IDEMPOTENCY_TTL_S = 24 * 3600


def new_id(kind: str) -> str:
    return f"{kind}_{uuid.uuid4().hex}"


class Runs:
    """Create, read and move runs through their lifecycle."""

    def __init__(
        self,
        stores: Stores,
        *,
        publish_grace_s: float = 30.0,
        max_active_per_owner: int | None = None,
    ) -> None:
        self.log = stores.log
        self.store = stores.runs
        self.scheduler = stores.scheduler
        self._publish_grace_s = publish_grace_s
        self._max_active = max_active_per_owner
        self._heads: Flights[str, RunHead | None] = Flights()

    # Creating and reading ----------------------------------------------------------
    async def create(
        self,
        *,
        owner: str,
        tool: str,
        input: Mapping[str, Any],
        session_id: str | None = None,
        idempotency_key: str | None = None,
        retry_of: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """Record a queued run with its `run.queued` event; (record, created?).

        `retry_of`: the run this one retries (same tool, input and session), kept on it.
        """
        input_json = _storable(input, session_id, idempotency_key)
        run_id = new_id("run")
        if idempotency_key is not None:
            run_id, existing = await self._bind(owner, idempotency_key, run_id)
            if existing is not None:
                return existing, False
        if self._max_active is not None:
            await self._admit(owner, run_id, self._max_active)
        session_id = session_id or new_id("sess")
        now = utcnow()
        fields = {
            "run_id": run_id,
            "session_id": session_id,
            "owner": owner,
            "tool": tool,
            "input": input_json,
            "status": RunStatus.QUEUED.value,
            "attempt": "1",
            "created_at": now,
            "updated_at": now,
        }
        if retry_of is not None:
            fields["retry_of"] = retry_of
        body = encode_body(
            run_id, session_id, "run.queued", {"tool": tool, "input": input, "attempt": 1}, now
        )
        return await self._store(fields, body)

    async def _bind(self, owner: str, key: str, run_id: str) -> tuple[str, RunRecord | None]:
        """Bind the Idempotency-Key to `run_id`: (the bound run id, its run if it exists)."""
        bound = await self.store.claim_idempotency(owner, key, run_id, _IDEMPOTENCY_TTL_S)
        if bound == run_id:
            return run_id, None
        # None: the first request died between binding the key and storing the run; its
        # id is taken over rather than failing forever.
        return bound, await self.store.get_run(bound)

    async def _store(self, fields: dict[str, str], body: bytes) -> tuple[RunRecord, bool]:
        run_id, owner = fields["run_id"], fields["owner"]
        # Scheduled before it exists, so a crash after create but before publish is
        # found by the reaper and republished (see workers.reaper).
        await self.scheduler.schedule(run_id, time.time() + self._publish_grace_s)
        try:
            await self.log.create_run(fields, "run.queued", body)
        except Conflict:
            existing = await self.store.get_run(run_id)
            if existing is None:
                await self.store.drop_active(owner, [run_id])
                raise
            return existing, False
        except BaseException:
            await asyncio.shield(self._forget_active(owner, run_id))
            raise
        return record_from({**fields, "last_event_id": "1"}), True

    async def _admit(self, owner: str, run_id: str, limit: int) -> None:
        """Count the run against the owner's active runs; `TooManyRuns` at the limit.

        The owner's active set is kept with the lifecycle: a run joins it here, before it
        exists, and leaves it in `finish`. A process that dies between a terminal append
        and the removal leaves a stale member; those are found and dropped here, only
        when the set looks full, so the check stays one Redis call in the common case.
        """
        if await self.store.admit_active(owner, run_id, limit):
            return
        stale = []
        for member in await self.store.active_runs(owner, limit):
            record = await self.store.get_run(member)
            if record is None or record.terminal:
                stale.append(member)
        if stale:
            await self.store.drop_active(owner, stale)
        if not stale or not await self.store.admit_active(owner, run_id, limit):
            raise TooManyRuns(
                f"at most {limit} active runs per caller (RUNRELAY_MAX_ACTIVE_RUNS_PER_OWNER): "
                "wait for one to end, or cancel one"
            )

    async def _forget_active(self, owner: str, run_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.store.drop_active(owner, [run_id])

    async def get(self, run_id: str, owner: str | None = None) -> RunRecord:
        """The run, or `NotFound` when it is unknown or (given `owner`) not theirs."""
        record = await self.store.get_run(run_id) if valid_id(run_id) else None
        if record is None or (owner is not None and record.owner != owner):
            raise NotFound(f"run {run_id} not found")
        return record

    async def get_at(self, run_id: str, owner: str, cursor: int) -> RunHead:
        """What a stream opening at `cursor` needs of the run (`get`'s checks, its
        `RunHead` only): concurrent opens of one run share one read (a reconnect storm:
        every client of a run at once).

        A shared read may have been made before this client's newest event was stored,
        so a record that is behind `cursor` is read again, for this caller alone.
        """
        if not valid_id(run_id):
            raise NotFound(f"run {run_id} not found")
        head = await self._heads.run(run_id, lambda: self.store.get_head(run_id))
        if head is not None and head.owner == owner and head.last_event_id < cursor:
            head = await self.store.get_head(run_id)
        if head is None or head.owner != owner:
            raise NotFound(f"run {run_id} not found")
        return head

    async def list(
        self,
        owner: str,
        *,
        session_id: str | None = None,
        status: RunStatus | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        out: list[RunRecord] = []
        offset, batch = 0, max(limit, 50)
        while len(out) < limit:
            rows = await self.store.list_runs(owner, session_id, batch, offset)
            if not rows:
                break
            out += [r for r in rows if status is None or r.status == status]
            offset += batch
            if status is None:
                break
        return out[:limit]

    # Appending -------------------------------------------------------------------------
    async def append(
        self,
        run: RunRecord,
        type_: str,
        data: Mapping[str, Any],
        rule: Transition,
    ) -> int:
        body = encode_body(run.run_id, run.session_id, type_, data, utcnow())
        return await self.log.append(run.owner, run.session_id, run.run_id, type_, body, rule)

    async def emit(
        self, run: RunRecord, type_: str, data: Mapping[str, Any], *, worker: str | None = None
    ) -> int:
        """A non-lifecycle event (output, tool, custom.*) from whoever runs the run now."""
        return await self.append(run, type_, data, self.emit_rule(run, worker))

    def emit_rule(self, run: RunRecord, worker: str | None) -> Transition:
        """The rule of `emit`: the run is running, held by `worker` and this attempt."""
        return Transition(_RUNNING, expect=_holder(run, worker))

    async def start(self, run: RunRecord, *, worker: str, lease_until: float) -> RunRecord | None:
        """Claim a queued run for `worker`; None when someone else has it or it ended."""
        now = utcnow()
        rule = Transition(
            frozenset({RunStatus.QUEUED.value}),
            to=RunStatus.RUNNING.value,
            expect={"attempt": str(run.attempt)},
            fields={
                "worker": worker,
                "lease_until": repr(lease_until),
                "started_at": run.started_at or now,
                "updated_at": now,
            },
        )
        try:
            await self.append(run, "run.started", {"attempt": run.attempt, "worker": worker}, rule)
        except AppendRefused:
            return None
        return await self.get(run.run_id)

    async def refresh_lease(
        self, run: RunRecord, *, worker: str, lease_until: float
    ) -> RunRecord | None:
        """Extend the lease; None when the run is no longer this worker's to run."""
        applied, record = await self.store.update_run(
            run.run_id,
            {"status": RunStatus.RUNNING.value, "worker": worker, "attempt": str(run.attempt)},
            {"lease_until": repr(lease_until)},
        )
        return record if applied else None

    async def delegate(
        self, run: RunRecord, data: Mapping[str, Any], *, worker: str | None = None
    ) -> int:
        """`operation.accepted`: the run waits for an external completion; no worker holds it.

        The record keeps the pending ``operation_id`` (and forgets any earlier result), so
        `complete_operation` applies only the completion of the operation it waits for.
        """
        rule = Transition(
            _RUNNING,
            to=RunStatus.WAITING.value,
            expect=_holder(run, worker),
            fields={
                "worker": "",
                "lease_until": "",
                "operation_id": str(data.get("operation_id", "")),
                "operation_result": "",
            },
        )
        return await self.append(run, "operation.accepted", data, rule)

    async def complete_operation(
        self, run: RunRecord, operation_id: str, data: Mapping[str, Any]
    ) -> int:
        """`operation.completed`: the waiting run goes back to `queued` with the result.

        Allowed only while the run waits for `operation_id`, so of two copies of one
        completion exactly one is applied. A worker then claims the run again (same
        attempt) and the tool reads the result from ``operation_result``.
        """
        result = {k: data.get(k) for k in ("success", "result", "error")}
        rule = Transition(
            _WAITING,
            to=RunStatus.QUEUED.value,
            expect={"operation_id": operation_id},
            fields={"operation_result": orjson.dumps(result).decode()},
        )
        return await self.append(run, "operation.completed", data, rule)

    async def retry(self, run: RunRecord, reason: str, *, expect: Mapping[str, str]) -> int:
        """Back to `queued` for the next attempt (`run.retrying`)."""
        attempt = run.attempt + 1
        rule = Transition(
            frozenset({RunStatus.RUNNING.value, RunStatus.QUEUED.value}),
            to=RunStatus.QUEUED.value,
            expect=expect,
            fields={"attempt": str(attempt), "worker": "", "lease_until": ""},
        )
        return await self.append(run, "run.retrying", {"attempt": attempt, "reason": reason}, rule)

    async def finish(
        self,
        run: RunRecord,
        status: RunStatus,
        *,
        error: str | None = None,
        reason: str | None = None,
        expect: Mapping[str, str] | None = None,
    ) -> int:
        """Append the one terminal event; `AppendRefused` if the run already ended."""
        if not status.terminal:
            raise ValueError(f"{status} is not terminal")
        data: dict[str, Any] = {"status": status.value}
        fields = {"worker": "", "lease_until": ""}
        if error is not None:
            data["error"] = error
            fields["error"] = error
        if reason is not None:
            data["reason"] = reason
        rule = Transition(to=status.value, terminal=True, expect=expect or {}, fields=fields)
        event_id = await self.append(run, f"run.{status.value}", data, rule)
        await self.scheduler.unschedule(run.run_id)
        await self.store.drop_active(run.owner, [run.run_id])
        return event_id

    async def cancel(self, run: RunRecord, reason: str = "cancelled by client") -> RunRecord:
        """Idempotent: ends the run `cancelled` unless it already ended; returns the record.

        The terminal event is appended here, at once; the worker running the tool sees
        the run end and stops it, and any append it still tries is refused.
        """
        if run.status in _ACTIVE:
            await self.store.update_run(run.run_id, {}, {"cancel_requested": "1"})
            with contextlib.suppress(AppendRefused):
                await self.finish(run, RunStatus.CANCELLED, reason=reason)
        return await self.get(run.run_id)


def _storable(input: Mapping[str, Any], session_id: str | None, idempotency_key: str | None) -> str:
    """The input as stored JSON; `BadRequest` naming the field that cannot be stored."""
    if session_id is not None and not valid_id(session_id):
        raise BadRequest("session_id must be 1-128 of A-Z a-z 0-9 . _ : -", "session_id")
    if idempotency_key is not None and not valid_id(idempotency_key):
        raise BadRequest("Idempotency-Key must be 1-128 of A-Z a-z 0-9 . _ : -", "Idempotency-Key")
    try:
        return orjson.dumps(dict(input)).decode()
    except orjson.JSONEncodeError as exc:
        # Valid JSON can still be unstorable: integers past 64 bits, lone surrogates.
        raise BadRequest(f"input cannot be stored as JSON: {exc}", "input") from None


def _holder(run: RunRecord, worker: str | None) -> dict[str, str]:
    if worker is None:
        return {}
    return {"worker": worker, "attempt": str(run.attempt)}
