"""The embedded stores: the same contracts as Redis, in one process, for `runrelay dev`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.errors import AppendRefused, Conflict, NotFound, RunRelayError
from shared.eventlog.base import (
    WORKER_HISTORY_S,
    Batch,
    Stores,
    Transition,
    record_from,
    worker_history,
)
from shared.keys import Keys
from shared.models import (
    TERMINAL,
    Operation,
    Page,
    RunHead,
    RunRecord,
    RunStatus,
    StoredEvent,
    utcnow,
)


@dataclass
class MemoryLog:
    events: list[StoredEvent] = field(default_factory=list)
    last_id: int = 0
    expires_at: float | None = None

    def add(self, type_: str, json: bytes, max_events: int) -> None:
        self.last_id += 1
        self.events.append(StoredEvent(self.last_id, type_, json))
        if len(self.events) > max_events:
            del self.events[: len(self.events) - max_events]


@dataclass
class _Session:
    owner: str
    active: int = 0
    runs: dict[str, float] = field(default_factory=dict)
    expires_at: float | None = None


class MemoryState:
    """Everything the embedded stores hold, in one place: a run's record and its log
    change together. No method awaits between reading and writing, so each is atomic."""

    def __init__(self, *, prefix: str = "runrelay:", ttl_s: int = 3600, max_events: int = 10_000):
        self.keys = Keys(prefix)
        self.ttl_s = ttl_s
        self.max_events = max_events
        self.runs: dict[str, dict[str, str]] = {}
        self.run_expiry: dict[str, float] = {}
        self.logs: dict[str, MemoryLog] = {}
        self.sessions: dict[str, _Session] = {}
        self.owner_runs: dict[str, dict[str, float]] = {}
        self.owner_active: dict[str, dict[str, float]] = {}
        self.idem: dict[str, tuple[str, float]] = {}
        self.ops: dict[str, tuple[Operation, float]] = {}
        self.deadlines: dict[str, float] = {}
        self.workers: dict[str, tuple[dict[str, Any], float]] = {}
        self.tools: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Condition()

    def expired(self, at: float | None) -> bool:
        return at is not None and at <= time.time()

    def log(self, key: str) -> MemoryLog | None:
        log = self.logs.get(key)
        if log is not None and self.expired(log.expires_at):
            del self.logs[key]
            return None
        return log

    def session(self, owner: str, session_id: str) -> _Session | None:
        key = self.keys.session(session_id, owner)
        sess = self.sessions.get(key)
        if sess is not None and self.expired(sess.expires_at):
            del self.sessions[key]
            self.logs.pop(self.keys.session_log(session_id, owner), None)
            return None
        return sess

    def run(self, run_id: str) -> dict[str, str] | None:
        run = self.runs.get(run_id)
        if run is not None and self.expired(self.run_expiry.get(run_id)):
            del self.runs[run_id]
            self.logs.pop(self.keys.run_log(run["session_id"], run_id), None)
            return None
        return run

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def append_event(
        self, run: dict[str, str], sess_log: MemoryLog, type_: str, body: bytes
    ) -> int:
        run_log = self.logs.setdefault(
            self.keys.run_log(run["session_id"], run["run_id"]), MemoryLog()
        )
        event_id = int(run.get("last_event_id", "0")) + 1
        run["last_event_id"] = str(event_id)
        run_log.last_id = event_id - 1
        run_log.add(type_, b'{"id":%d,' % event_id + body, self.max_events)
        sess_log.add(
            type_,
            b'{"id":%d,"run_event_id":%d,' % (sess_log.last_id + 1, event_id) + body,
            self.max_events,
        )
        return event_id


class MemoryEventLog:
    """`EventLog` in process memory."""

    def __init__(self, state: MemoryState) -> None:
        self._s = state
        self.keys = state.keys

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_run(
        self, fields: Mapping[str, str], first_type: str, first_body: bytes
    ) -> None:
        run_id, session_id, owner = fields["run_id"], fields["session_id"], fields["owner"]
        if self._s.run(run_id) is not None:
            raise Conflict(f"run {run_id} already exists")
        sess = self._s.session(owner, session_id)
        if sess is None:
            sess = self._s.sessions[self._s.keys.session(session_id, owner)] = _Session(owner)
        sess_log = self._s.logs.setdefault(self._s.keys.session_log(session_id, owner), MemoryLog())
        sess.active += 1
        sess.expires_at = sess_log.expires_at = None
        now = time.time()
        sess.runs[run_id] = now
        self._s.owner_runs.setdefault(owner, {})[f"{session_id}/{run_id}"] = now
        run = self._s.runs[run_id] = {**fields, "last_event_id": "0"}
        self._s.append_event(run, sess_log, first_type, first_body)
        await self._s.notify()

    async def append(
        self, owner: str, session_id: str, run_id: str, type_: str, body: bytes, rule: Transition
    ) -> int:
        event_id = self._append(Batch(owner, session_id, run_id, ((type_, body),), rule))
        await self._s.notify()
        return event_id

    async def append_batches(self, batches: Sequence[Batch]) -> list[int | RunRelayError]:
        out: list[int | RunRelayError] = []
        for batch in batches:
            try:
                out.append(self._append(batch))
            except (AppendRefused, NotFound) as exc:
                out.append(exc)
        await self._s.notify()
        return out

    def _append(self, batch: Batch) -> int:
        """One batch: checked once, then all its events (no await: atomic)."""
        owner, session_id, run_id, rule = batch.owner, batch.session_id, batch.run_id, batch.rule
        run = self._s.run(run_id)
        if run is None or run["session_id"] != session_id or run["owner"] != owner:
            raise NotFound(f"run {run_id} not found")
        status = run["status"]
        type_ = batch.events[0][0]
        if status in TERMINAL or (rule.allowed_from and status not in rule.allowed_from):
            raise AppendRefused(run_id, status, type_)
        if any(run.get(k) != v for k, v in rule.expect.items()):
            raise AppendRefused(run_id, status, type_)
        sess = self._s.session(owner, session_id) or self._s.sessions.setdefault(
            self._s.keys.session(session_id, owner), _Session(owner)
        )
        sess_log = self._s.logs.setdefault(self._s.keys.session_log(session_id, owner), MemoryLog())
        event_id = int(run.get("last_event_id", "0"))
        for type_, body in batch.events:
            event_id = self._s.append_event(run, sess_log, type_, body)
        now = rule.fields.get("updated_at") or utcnow()
        run["updated_at"] = now
        if rule.to:
            run["status"] = rule.to
        run.update(rule.fields)
        if rule.terminal:
            run["finished_at"] = now
            expiry = time.time() + self._s.ttl_s
            self._s.run_expiry[run_id] = expiry
            self._s.logs[self._s.keys.run_log(session_id, run_id)].expires_at = expiry
            sess.active -= 1
            if sess.active <= 0:
                sess.expires_at = sess_log.expires_at = expiry
        return event_id

    async def read(self, log_key: str, after: int, limit: int) -> Page:
        log = self._s.log(log_key)
        if log is None or not log.events:
            return Page([], 0, log.last_id if log else 0)
        first = log.events[0].id
        start = max(0, after - first + 1)
        return Page(log.events[start : start + limit], first, log.last_id)

    async def wait(
        self, cursors: Mapping[str, int], timeout_s: float, count: int
    ) -> dict[str, list[StoredEvent]]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        async with self._s.changed:
            while True:
                found = {}
                for key, cursor in cursors.items():
                    log = self._s.log(key)
                    if log is not None and log.last_id > cursor:
                        page = await self.read(key, cursor, count)
                        if page.events:
                            found[key] = page.events
                if found:
                    return found
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return {}
                try:
                    await asyncio.wait_for(self._s.changed.wait(), remaining)
                except TimeoutError:
                    return {}

    async def idle(self) -> None:
        return None

    async def wake(self, wake_key: str) -> None:
        log = self._s.logs.setdefault(wake_key, MemoryLog())
        log.add("wake", b"{}", 1)
        await self._s.notify()

    async def append_topic(self, owner: str, topic: str, type_: str, body: bytes) -> int:
        log = self._s.logs.setdefault(self._s.keys.topic_log(owner, topic), MemoryLog())
        log.add(type_, b'{"id":%d,' % (log.last_id + 1) + body, self._s.max_events)
        log.expires_at = time.time() + self._s.ttl_s
        await self._s.notify()
        return log.last_id


class MemoryRunStore:
    """`RunStore` in process memory."""

    def __init__(self, state: MemoryState) -> None:
        self._s = state

    async def get_run(self, run_id: str) -> RunRecord | None:
        run = self._s.run(run_id)
        return record_from(run) if run is not None else None

    async def get_head(self, run_id: str) -> RunHead | None:
        run = self._s.run(run_id)
        if run is None:
            return None
        status, last = RunStatus(run["status"]), int(run.get("last_event_id", "0"))
        return RunHead(run_id, run["session_id"], run["owner"], status, last)

    async def update_run(
        self, run_id: str, expect: Mapping[str, str], fields: Mapping[str, str]
    ) -> tuple[bool, RunRecord | None]:
        run = self._s.run(run_id)
        if run is None:
            return False, None
        applied = all(run.get(k) == v for k, v in expect.items())
        if applied:
            run.update(fields)
        return applied, record_from(run)

    async def list_runs(
        self, owner: str, session_id: str | None, limit: int, offset: int
    ) -> list[RunRecord]:
        if session_id is not None:
            sess = self._s.session(owner, session_id)
            refs = [(r, t) for r, t in (sess.runs.items() if sess else [])]
        else:
            owned = self._s.owner_runs.get(owner, {}).items()
            refs = [(ref.split("/", 1)[1], t) for ref, t in owned]
        refs.sort(key=lambda ref: ref[1], reverse=True)
        records = [self._s.run(rid) for rid, _ in refs[offset : offset + limit]]
        return [record_from(r) for r in records if r is not None and r["owner"] == owner]

    async def session_exists(self, owner: str, session_id: str) -> bool:
        return self._s.session(owner, session_id) is not None

    async def claim_idempotency(self, owner: str, key: str, run_id: str, ttl_s: int) -> str:
        k = self._s.keys.idempotency(owner, key)
        bound = self._s.idem.get(k)
        if bound is None or self._s.expired(bound[1]):
            self._s.idem[k] = bound = (run_id, time.time() + ttl_s)
        return bound[0]

    async def put_operation(self, op: Operation, ttl_s: int) -> bool:
        current = self._s.ops.get(op.operation_id)
        if current is not None and not self._s.expired(current[1]):
            return False
        self._s.ops[op.operation_id] = (op, time.time() + ttl_s)
        return True

    async def get_operation(self, operation_id: str) -> Operation | None:
        current = self._s.ops.get(operation_id)
        if current is None or self._s.expired(current[1]):
            return None
        return current[0]

    async def admit_active(self, owner: str, run_id: str, limit: int) -> bool:
        active = self._s.owner_active.setdefault(owner, {})
        if run_id not in active and len(active) >= limit:
            return False
        active.setdefault(run_id, time.time())
        return True

    async def drop_active(self, owner: str, run_ids: Sequence[str]) -> None:
        active = self._s.owner_active.get(owner, {})
        for run_id in run_ids:
            active.pop(run_id, None)
        if not active:
            self._s.owner_active.pop(owner, None)

    async def active_runs(self, owner: str, limit: int) -> list[str]:
        active = self._s.owner_active.get(owner, {})
        return [r for _, r in sorted((t, r) for r, t in active.items())[:limit]]


class MemoryScheduler:
    """`Scheduler` in process memory."""

    def __init__(self, state: MemoryState) -> None:
        self._s = state

    async def schedule(self, run_id: str, due: float) -> None:
        self._s.deadlines[run_id] = due

    async def due(self, now: float, limit: int) -> list[str]:
        ready = sorted((t, r) for r, t in self._s.deadlines.items() if t <= now)
        return [r for _, r in ready[:limit]]

    async def unschedule(self, run_id: str) -> None:
        self._s.deadlines.pop(run_id, None)


class MemoryWorkerRegistry:
    """`WorkerRegistry` in process memory."""

    def __init__(self, state: MemoryState) -> None:
        self._s = state

    async def heartbeat(self, worker_id: str, info: Mapping[str, Any], ttl_s: float) -> None:
        now = time.time()
        self._s.workers[worker_id] = (
            {**info, "worker_id": worker_id, "last_seen": now},
            now + ttl_s,
        )
        horizon = now - WORKER_HISTORY_S
        for gone in [w for w, (_, until) in self._s.workers.items() if until < horizon]:
            del self._s.workers[gone]

    async def remove(self, worker_id: str) -> None:
        entry = self._s.workers.get(worker_id)
        if entry is not None:
            self._s.workers[worker_id] = ({**entry[0], "left": "clean"}, time.time())

    async def live(self) -> list[dict[str, Any]]:
        return [
            info
            for info, until in self._s.workers.values()
            if not self._s.expired(until) and not info.get("left")
        ]

    async def recent(self, since: float) -> list[dict[str, Any]]:
        return worker_history(self._s.workers.values(), since, time.time())

    async def advertise_tools(self, tools: Sequence[Mapping[str, Any]], now: float) -> None:
        for spec in tools:
            self._s.tools[str(spec["name"])] = {**spec, "last_seen": now}

    async def list_tools(self, since: float) -> list[dict[str, Any]]:
        return [t for _, t in sorted(self._s.tools.items()) if t["last_seen"] >= since]


def memory_stores(
    *, prefix: str = "runrelay:", ttl_s: int = 3600, max_events: int = 10_000
) -> Stores:
    """The embedded stores on one shared `MemoryState`."""
    # Imported here: the stream store builds on this module's `MemoryState` and `MemoryLog`.
    from shared.eventlog.memory_streams import MemoryStreamStore

    state = MemoryState(prefix=prefix, ttl_s=ttl_s, max_events=max_events)
    return Stores(
        log=MemoryEventLog(state),
        runs=MemoryRunStore(state),
        scheduler=MemoryScheduler(state),
        workers=MemoryWorkerRegistry(state),
        streams=MemoryStreamStore(state),
    )
