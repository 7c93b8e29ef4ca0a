"""Every Redis key runrelay writes, in one place.

All of one session's keys share the hash tag ``{s:<session_id>}``: a run's record,
its log, and its session's log are written by one script, so on Redis Cluster
they must sit in one slot. Everything else is addressed by its own single key.

A session belongs to its owner: the session's own keys carry a digest of the owner
(owners are arbitrary strings, a JWT `sub`, and the digest keeps the session keys
short and safe inside a hash tag), so two owners who pick the same session id get
two sessions, and nobody can learn that an id is in use by someone else. The
per-owner indexes (`owner_runs`, `owner_active`, `idempotency`) hold the raw owner:
they are single keys outside any hash tag, and Redis keys are binary-safe.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass


@functools.lru_cache(maxsize=4096)
def _owner_digest(owner: str) -> str:
    # Owners are arbitrary strings (a JWT `sub`); a digest keeps key names safe. Cached:
    # every batch a worker appends names three session keys (a sha256 each, ~1 µs).
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def _tag(self, session_id: str) -> str:
        return f"{self.prefix}{{s:{session_id}}}"

    def run(self, session_id: str, run_id: str) -> str:
        return f"{self._tag(session_id)}:run:{run_id}"

    def run_around(self, run_id: str) -> tuple[str, str]:
        """`run`'s key around its session id: ``head + session_id + tail`` (a script that
        looks the session up builds the key from these). Cut out of `run` itself, so the
        two never disagree."""
        head, _, tail = self.run("\0", run_id).partition("\0")
        return head, tail

    def run_log(self, session_id: str, run_id: str) -> str:
        return f"{self._tag(session_id)}:run:{run_id}:log"

    def session(self, session_id: str, owner: str) -> str:
        return f"{self._tag(session_id)}:session:{_owner_digest(owner)}"

    def session_log(self, session_id: str, owner: str) -> str:
        return f"{self._tag(session_id)}:session:log:{_owner_digest(owner)}"

    def session_runs(self, session_id: str, owner: str) -> str:
        return f"{self._tag(session_id)}:session:runs:{_owner_digest(owner)}"

    def run_index(self, run_id: str) -> str:
        """run id -> session id; written once at create, never changes."""
        return f"{self.prefix}runidx:{run_id}"

    def owner_runs(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}:runs"

    def owner_active(self, owner: str) -> str:
        """The owner's unfinished runs (zset run id -> creation time), for the active-runs limit."""
        return f"{self.prefix}owner:{owner}:active"

    def idempotency(self, owner: str, key: str) -> str:
        return f"{self.prefix}idem:{owner}:{key}"

    def operation(self, operation_id: str) -> str:
        return f"{self.prefix}op:{operation_id}"

    def deadlines(self) -> str:
        return f"{self.prefix}deadlines"

    def workers(self) -> str:
        return f"{self.prefix}workers"

    def topic(self, owner: str, topic: str) -> str:
        return f"{self.prefix}{{t:{owner}:{topic}}}:topic"

    def topic_log(self, owner: str, topic: str) -> str:
        return f"{self.prefix}{{t:{owner}:{topic}}}:topic:log"

    def _ds_tag(self, owner: str, path: str) -> str:
        # One hash tag per Durable Stream: a digest, since paths may hold any character
        # (a "}" would end the tag early) and are owned (two owners, two streams).
        digest = hashlib.sha256(f"{owner}\0{path}".encode()).hexdigest()[:24]
        return f"{self.prefix}{{ds:{digest}}}"

    def ds_keys(self, owner: str, path: str) -> list[str]:
        """`ds_meta`, `ds_log` and `ds_producers` of one stream (one digest for the three)."""
        tag = self._ds_tag(owner, path)
        return [f"{tag}:meta", f"{tag}:log", f"{tag}:producers"]

    def ds_meta(self, owner: str, path: str) -> str:
        """A Durable Stream's configuration and counters (hash)."""
        return f"{self._ds_tag(owner, path)}:meta"

    def ds_log(self, owner: str, path: str) -> str:
        """A Durable Stream's messages (stream, ids ``0-<seq>``)."""
        return f"{self._ds_tag(owner, path)}:log"

    def ds_producers(self, owner: str, path: str) -> str:
        """A Durable Stream's idempotent producers: id -> ``epoch:seq`` (hash)."""
        return f"{self._ds_tag(owner, path)}:producers"

    def wakeup(self, reader_id: str) -> str:
        return f"{self.prefix}wakeup:{reader_id}"

    def workers_info(self) -> str:
        return f"{self.prefix}workers:info"

    def tools(self) -> str:
        return f"{self.prefix}tools"
