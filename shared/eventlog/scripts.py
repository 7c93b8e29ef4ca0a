"""The Lua scripts behind every Redis state change: each runs as one atomic step.

Log entries use stream ids ``0-<seq>``: the run-local sequence *is* the stream id,
so "events after cursor N" is ``XRANGE log (0-N +`` and there is no mapping table.
Every key one script touches shares the session hash tag (see `shared.keys`).
"""

from __future__ import annotations

# Shared by CREATE and APPEND: append one pre-encoded event to the run log and the
# session log, assigning both ids from counters kept in the run and session hashes.
_APPEND_EVENT = """
local function append_event(run, log, sess, slog, etype, body, maxlen)
  local id = redis.call('HINCRBY', run, 'last_event_id', 1)
  redis.call('XADD', log, 'MAXLEN', maxlen, '0-' .. id,
             't', etype, 'd', '{"id":' .. id .. ',' .. body)
  local sid = redis.call('HINCRBY', sess, 'last_event_id', 1)
  redis.call('XADD', slog, 'MAXLEN', maxlen, '0-' .. sid,
             't', etype, 'd', '{"id":' .. sid .. ',"run_event_id":' .. id .. ',' .. body)
  -- Readers following these logs (an API's tail hub) hear of the news on the log's key.
  redis.call('SPUBLISH', log, id)
  redis.call('SPUBLISH', slog, sid)
  return id
end
"""

# KEYS: run, run log, session, session log, session runs
# ARGV: owner, run_id, created_score, first type, first body, maxlen, n, field/value pairs...
CREATE = (
    _APPEND_EVENT
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[3], 'owner', ARGV[1])
local n = tonumber(ARGV[7])
for i = 8, 7 + 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HINCRBY', KEYS[3], 'active', 1)
for i = 3, 5 do redis.call('PERSIST', KEYS[i]) end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[2])
append_event(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[5], ARGV[6])
return 'ok'
"""
)

# KEYS: run, run log, session, session log, session runs
# ARGV: type, body, to ('' = keep), terminal ('1'/'0'), allowed (',a,b,' or ''), now,
#       ttl, maxlen, n_expect, expect pairs..., n_fields, field pairs...
# Returns {id, previous status} on success, {0, status} when missing or refused
# ('' = missing), {-1, status, field} when an expectation failed.
APPEND = (
    _APPEND_EVENT
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {0, ''} end
if status == 'completed' or status == 'failed' or status == 'cancelled' then
  return {0, status}
end
if ARGV[5] ~= '' and not string.find(ARGV[5], ',' .. status .. ',', 1, true) then
  return {0, status}
end
local ne = tonumber(ARGV[9])
local i = 10
for _ = 1, ne do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return {-1, status, ARGV[i]} end
  i = i + 2
end
local nf = tonumber(ARGV[i])
i = i + 1
local id = append_event(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[8])
redis.call('HSET', KEYS[1], 'updated_at', ARGV[6])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[3]) end
for _ = 1, nf do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if ARGV[4] == '1' then
  local ttl = tonumber(ARGV[7])
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[6])
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
