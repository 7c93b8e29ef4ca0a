"""The Lua scripts behind every Redis state change: each runs as one atomic step.

Log entries use stream ids ``0-<seq>``: the run-local sequence *is* the stream id,
so "events after cursor N" is ``XRANGE log (0-N +`` and there is no mapping table.
Every key one script touches shares the session hash tag (see `shared.keys`).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# Shared by CREATE and APPEND: append a batch's pre-encoded events to the run log and
# the session log. The batch comes as two arguments (see `frame_events`), not two per
# event: `lens` holds each event's type length and body length (big-endian 32-bit),
# `blob` the types and bodies back to back, so a client packs two arguments per batch
# and the script cuts the events out with struct.unpack and string.sub. Each counter
# moves once per batch (HINCRBY by n), so the ids are consecutive; readers following
# these logs (an API's tail hub) hear of the news once per batch, on the log's key,
# with the batch's last id.
_APPEND_EVENTS = """
local function append_events(run, log, sess, slog, maxlen, lens, blob)
  local n = #lens / 8
  local id = redis.call('HINCRBY', run, 'last_event_id', n) - n
  local sid = redis.call('HINCRBY', sess, 'last_event_id', n) - n
  local at = 1
  for k = 1, #lens, 8 do
    local tlen, blen = struct.unpack('>I4I4', lens, k)
    local etype = string.sub(blob, at, at + tlen - 1)
    local body = string.sub(blob, at + tlen, at + tlen + blen - 1)
    at = at + tlen + blen
    id = id + 1
    sid = sid + 1
    -- Each id as text once (a number in a concatenation is formatted every time).
    local ids, sids = string.format('%d', id), string.format('%d', sid)
    redis.call('XADD', log, '0-' .. ids, 't', etype, 'd', '{"id":' .. ids .. ',' .. body)
    redis.call('XADD', slog, '0-' .. sids,
               't', etype, 'd', '{"id":' .. sids .. ',"run_event_id":' .. ids .. ',' .. body)
  end
  -- Trimmed once per batch, not per entry (the same result: nobody sees in between).
  redis.call('XTRIM', log, 'MAXLEN', maxlen)
  redis.call('XTRIM', slog, 'MAXLEN', maxlen)
  redis.call('SPUBLISH', log, id)
  redis.call('SPUBLISH', slog, sid)
  return id
end
"""


def frame_events(events: Sequence[tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """A batch's ``(type, body)`` events as the scripts' two arguments ``lens, blob``."""
    parts: list[bytes] = []
    lens: list[int] = []
    for type_, body in events:
        name = type_.encode()
        parts += (name, body)
        lens += (len(name), len(body))
    return struct.pack(f">{len(lens)}I", *lens), b"".join(parts)


# KEYS: run, run log, session, session log, session runs
# ARGV: owner, run_id, created_score, first event (lens, blob: `frame_events`), maxlen,
#       n, field/value pairs...
CREATE = (
    _APPEND_EVENTS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[3], 'owner', ARGV[1])
local n = tonumber(ARGV[7])
for i = 8, 7 + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[3], 'active', 1)
for i = 3, 5 do redis.call('PERSIST', KEYS[i]) end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
append_events(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[4], ARGV[5])
return 'ok'
"""
)

# One batch of N >= 1 events of one run under one rule, atomically: the status and
# the expectations are checked once, all N events are stored with consecutive ids
# or none is, and a terminal rule ends the run after the batch's last event (so
# nothing can follow the terminal event, in this batch or any later one).
# KEYS: run, run log, session, session log, session runs
# ARGV: to ('' = keep), terminal ('1'/'0'), allowed (',a,b,' or ''), now, ttl, maxlen,
#       n_expect, expect pairs..., n_fields, field pairs..., then the events as two
#       arguments: lens, blob (`frame_events`).
# Returns {last id, previous status} on success, {0, status} when missing or refused
# ('' = missing), {-1, status, field} when an expectation failed.
APPEND = (
    _APPEND_EVENTS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {0, status}
end
if ARGV[3] ~= '' and not string.find(ARGV[3], ',' .. status .. ',', 1, true) then
  return {0, status}
end
local ne = tonumber(ARGV[7])
local i = 8
for _ = 1, ne do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return {-1, status, ARGV[i]} end
  i = i + 2
end
local nf = tonumber(ARGV[i])
local fields = i + 1
local first = fields + 2 * nf
local id = append_events(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[first], ARGV[first + 1])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[4])
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[1]) end
for f = fields, first - 1, 2 do redis.call('HSET', KEYS[1], ARGV[f], ARGV[f + 1]) end
if ARGV[2] == '1' then
  local ttl = tonumber(ARGV[5])
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
  if redis.call('HINCRBY', KEYS[3], 'active', -1) <= 0 then
    for k = 3, 5 do redis.call('EXPIRE', KEYS[k], ttl) end
  end
end
return {id, status}
"""
)

# KEYS: run.  ARGV: n_expect, expect pairs..., n_fields, field pairs...
# Returns {applied (1/0), flat HGETALL after}.
UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, {}} end
local ne = tonumber(ARGV[1])
local i = 2
local ok = true
for _ = 1, ne do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then ok = false end
  i = i + 2
end
local nf = tonumber(ARGV[i])
i = i + 1
if ok then
  for _ = 1, nf do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
end
return {ok and 1 or 0, redis.call('HGETALL', KEYS[1])}
"""


# KEYS: topic, topic log.  ARGV: type, body, ttl, maxlen.
APPEND_TOPIC = """
local id = redis.call('HINCRBY', KEYS[1], 'last_event_id', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '0-' .. id,
           't', ARGV[1], 'd', '{"id":' .. id .. ',' .. ARGV[2])
redis.call('SPUBLISH', KEYS[2], id)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return id
"""

# KEYS: the owner's active-runs zset. ARGV: run_id, limit, now.
# Admits the run unless the owner already has `limit` of them (a member already in is
# admitted again), so concurrent creates can never overshoot the limit.
ADMIT_ACTIVE = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: the run index.  ARGV: the run key around its session id (`Keys.run_around`),
# then the fields to read, if only some (`HEAD_FIELDS`).
# Returns {session id, flat HGETALL of the run (or HMGET of those fields)}, or false
# for an unknown run. One node only: the run's key is in its session's slot, not the
# index's (on a Cluster the two reads stay two).
READ_RUN = """
local session = redis.call('GET', KEYS[1])
if not session then return false end
local key = ARGV[1] .. session .. ARGV[2]
if #ARGV == 2 then return {session, redis.call('HGETALL', key)} end
return {session, redis.call('HMGET', key, unpack(ARGV, 3))}
"""

# A `RunHead`'s fields of the record, as `READ_RUN` or HMGET reads them.
HEAD_FIELDS = ("owner", "status", "last_event_id")
