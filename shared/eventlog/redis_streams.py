"""`StreamStore` on Redis: one hash tag per stream, every step one Lua script.

Keys (see `shared.keys`): ``ds_meta`` (hash: config and counters), ``ds_log`` (stream
of messages, ids ``0-<seq>``, SPUBLISHed like a run log so the tail hub hears it) and
``ds_producers`` (hash: producer id -> ``epoch:seq``). The producer check, the
closure check, the append and the producer's new state are one script, so a retry
can never be stored twice and nothing can follow the close.
"""

from __future__ import annotations

from typing import Any

from shared.eventlog.redis import RedisConnection, _flat_events
from shared.eventlog.streams import (
    AppendOutcome,
    Chunk,
    Producer,
    StreamConfig,
    StreamInfo,
    media_type,
    separator,
)
from shared.models import StoredEvent

# Shared by the scripts: sliding TTL (ttl seconds) or a fixed end (expms), on all keys.
_EXPIRE = """
local function expire(keys, ttl, expms)
  for _, k in ipairs(keys) do
    if ttl ~= '' and ttl ~= false then redis.call('PEXPIRE', k, tonumber(ttl) * 1000)
    elseif expms ~= '' and expms ~= false then redis.call('PEXPIREAT', k, tonumber(expms)) end
  end
end
"""

CREATE = (
    _EXPIRE
    + """
local meta, log, prods = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', meta, 'cfg', 'gone', 'tail', 'closed')
if cur[1] then
  local status = 'conflict'
  if cur[2] == '1' then status = 'gone' elseif cur[1] == ARGV[1] then status = 'exists' end
  return {status, tonumber(cur[3]), cur[4] == '1' and 1 or 0}
end
redis.call('DEL', log, prods)
local n = tonumber(ARGV[9])
for i = 1, n do redis.call('XADD', log, '0-' .. i, 't', 'm', 'd', ARGV[9 + i]) end
local entry = n
if ARGV[8] == '1' then
  entry = entry + 1
  redis.call('XADD', log, '0-' .. entry, 't', 'c', 'd', '')
end
redis.call('HSET', meta, 'cfg', ARGV[1], 'ct', ARGV[2], 'ttl', ARGV[3], 'exp', ARGV[4],
  'expms', ARGV[5], 'fork_of', ARGV[6], 'fork_off', ARGV[7], 'fork_sub', ARGV[10 + n],
  'tail', n, 'entry', entry,
  'closed', ARGV[8], 'forks', 0, 'gone', '0', 'sseq', '')
if entry > 0 then redis.call('SPUBLISH', log, entry) end
expire({meta, log, prods}, ARGV[3], ARGV[5])
return {'created', n, tonumber(ARGV[8])}
"""
)

APPEND = (
    _EXPIRE
    + """
local function le(a, b)  -- a <= b, byte-wise whatever the server's locale
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a <= #b
end
local meta, log, prods = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', meta, 'cfg', 'gone', 'tail', 'entry', 'closed', 'sseq', 'ttl',
  'expms')
if not cur[1] then return {'not_found', 0, 0, 0, 0} end
if cur[2] == '1' then return {'gone', 0, 0, 0, 0} end
local tail, entry = tonumber(cur[3]), tonumber(cur[4])
local closed = cur[5] == '1'
local c = closed and 1 or 0
local pid = ARGV[3]
local epoch, seq = 0, 0
if pid ~= '' then
  epoch, seq = tonumber(ARGV[4]), tonumber(ARGV[5])
  local st = redis.call('HGET', prods, pid)
  if st then
    local sep = string.find(st, ':', 1, true)
    local e, s = tonumber(string.sub(st, 1, sep - 1)), tonumber(string.sub(st, sep + 1))
    if epoch < e then return {'stale_epoch', tail, c, e, s} end
    if epoch == e then
      if seq <= s then return {'duplicate', tail, c, e, s} end
      if seq > s + 1 then return {'gap', tail, c, e, s + 1} end
    elseif seq ~= 0 then return {'epoch_seq', tail, c, e, s} end
  elseif seq ~= 0 then return {'gap', tail, c, epoch, 0} end
end
local n = tonumber(ARGV[8])
if closed then
  if n == 0 and ARGV[6] == '1' and pid == '' then return {'ok', tail, 1, 0, 0} end
  return {'closed', tail, 1, 0, 0}
end
if n > 0 then
  local ctm = string.match(cur[1], '^[^|]*')
  if ARGV[1] ~= ctm then return {'type_mismatch', tail, c, 0, 0} end
end
if ARGV[2] ~= '' then
  if cur[6] and cur[6] ~= '' and le(ARGV[2], cur[6]) then
    return {'seq_conflict', tail, c, 0, 0}
  end
  redis.call('HSET', meta, 'sseq', ARGV[2])
end
for i = 1, n do
  entry = entry + 1
  redis.call('XADD', log, '0-' .. entry, 't', 'm', 'd', ARGV[8 + i])
end
tail = entry
if ARGV[6] == '1' then
  entry = entry + 1
  redis.call('XADD', log, '0-' .. entry, 't', 'c', 'd', '')
  c = 1
end
redis.call('HSET', meta, 'tail', tail, 'entry', entry, 'closed', c)
if pid ~= '' then redis.call('HSET', prods, pid, epoch .. ':' .. seq) end
if entry > tonumber(cur[4]) then redis.call('SPUBLISH', log, entry) end
expire({meta, log, prods}, cur[7], cur[8])
return {'ok', tail, c, epoch, seq}
"""
)

# A read's start: the stream's metadata (as `info_from` takes it), false when none.
_METADATA = """
local meta, log, prods = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', meta, 'ct', 'ttl', 'exp', 'expms', 'fork_of', 'fork_off',
  'fork_sub', 'tail', 'closed', 'gone')
if not cur[1] then return false end
"""

READ = (
    _EXPIRE
    + _METADATA
    + """
if ARGV[3] == '1' and cur[10] ~= '1' and cur[2] ~= '' then
  expire({meta, log, prods}, cur[2], '')
end
local entries = {}
if ARGV[2] ~= '0' then
  entries = redis.call('XRANGE', log, '(0-' .. ARGV[1], '+', 'COUNT', ARGV[2])
end
for i = 1, #cur do if not cur[i] then cur[i] = '' end end
return {cur, entries}
"""
)

# READ's metadata, then the messages after ARGV[1] (at most ARGV[2] entries), cut at
# ARGV[3] bytes (at least one message), as a list of their bodies (joined by the caller).
# The log is read in batches sized from the messages read so far (one entry first):
# every entry XRANGE hands a script is copied into Lua, so reading all ARGV[2] entries
# to keep 1 MiB of them cost 40 ms for a stream of 160 x 64 KiB (10 MiB into Lua),
# against 2.5 ms for the 16 entries kept. Nor are they joined here: table.concat copies
# the page once more inside Redis (twice the script's time for 64 KiB messages), where
# the caller's join is one memcpy.
PAGE = (
    _EXPIRE
    + _METADATA
    + """
if cur[10] ~= '1' and cur[2] ~= '' then expire({meta, log, prods}, cur[2], '') end
local parts, n, size, last = {}, 0, 0, 0
local left, most, from, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), '(0-' .. ARGV[1], 1
while left > 0 do
  local entries = redis.call('XRANGE', log, from, '+', 'COUNT', math.min(batch, left))
  if #entries == 0 then break end
  for _, e in ipairs(entries) do
    local kv = e[2]
    if kv[2] == 'm' then
      local d = kv[4]
      if n > 0 and size + #d > most then left = 0 break end
      n = n + 1
      parts[n] = d
      size = size + #d
      last = tonumber(string.sub(e[1], 3))
    end
    left = left - 1
    from = '(' .. e[1]
  end
  -- Full (messages are never empty): no entry more to read just to find the cut.
  if size >= most then break end
  -- As many more as fit at the mean size so far, and one to find the cut.
  if size > 0 then batch = math.max(math.floor((most - size) * n / size), 0) + 1
  else batch = batch * 2 end
end
for i = 1, #cur do if not cur[i] then cur[i] = '' end end
return {cur, parts, last}
"""
)

RETAIN = """
local cur = redis.call('HMGET', KEYS[1], 'cfg', 'gone')
if not cur[1] then return 'not_found' end
if cur[2] == '1' then return 'gone' end
redis.call('HINCRBY', KEYS[1], 'forks', 1)
return 'ok'
"""

RELEASE = """
local meta = KEYS[1]
if redis.call('EXISTS', meta) == 0 then return '' end
local left = redis.call('HINCRBY', meta, 'forks', -1)
if left <= 0 and redis.call('HGET', meta, 'gone') == '1' then
  local parent = redis.call('HGET', meta, 'fork_of') or ''
  redis.call('DEL', meta, KEYS[2], KEYS[3])
  return 'collected:' .. parent
end
return ''
"""

DELETE = """
local meta, log, prods = KEYS[1], KEYS[2], KEYS[3]
local cur = redis.call('HMGET', meta, 'cfg', 'gone', 'forks', 'fork_of')
if not cur[1] then return {'not_found', ''} end
if cur[2] == '1' then return {'gone', ''} end
if tonumber(cur[3] or '0') > 0 then
  -- Forks hold copies of what they inherited: only the name stays, answering 410.
  redis.call('HSET', meta, 'gone', '1')
  redis.call('DEL', log, prods)
  return {'soft', ''}
end
redis.call('DEL', meta, log, prods)
return {'deleted', cur[4] or ''}
"""


def _opt_int(raw: str) -> int | None:
    return int(raw) if raw else None


def info_from(fields: list[str]) -> StreamInfo:
    """``[ct, ttl, exp, expms, fork_of, fork_off, fork_sub, tail, closed, gone]``, as the
    READ script answers them."""
    ct, ttl, exp, expms, fork_of, fork_off, fork_sub, tail, closed, gone = fields
    config = StreamConfig(
        content_type=ct,
        ttl_s=_opt_int(ttl),
        expires_at=exp or None,
        expires_ms=_opt_int(expms),
        fork_of=fork_of,
        fork_offset=int(fork_off or "0"),
        fork_sub=int(fork_sub or "0"),
    )
    return StreamInfo(config, int(tail or "0"), closed == "1", gone == "1")


class RedisStreamStore:
    """`StreamStore` on the shared `RedisConnection`."""

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self.keys = conn.keys
        redis = conn.redis
        self._create = redis.register_script(CREATE)
        self._append = redis.register_script(APPEND)
        self._read = redis.register_script(READ)
        self._page = redis.register_script(PAGE)
        self._retain = redis.register_script(RETAIN)
        self._release = redis.register_script(RELEASE)
        self._delete = redis.register_script(DELETE)
        # Appends and reads: concurrent ones share a round trip (one pipeline).
        self._batch = conn.batch

    def log_key(self, owner: str, path: str) -> str:
        return self.keys.ds_log(owner, path)

    def _keys(self, owner: str, path: str) -> list[str]:
        return self.keys.ds_keys(owner, path)

    async def create(
        self, owner: str, path: str, config: StreamConfig, messages: list[bytes], closed: bool
    ) -> tuple[str, StreamInfo]:
        args: list[Any] = [
            config.key(),
            config.content_type,
            config.ttl_s or "",
            config.expires_at or "",
            config.expires_ms or "",
            config.fork_of,
            config.fork_offset,
            "1" if closed else "0",
            len(messages),
            *messages,
            config.fork_sub,
        ]
        status, tail, is_closed = await self.conn.call(
            self._create(keys=self._keys(owner, path), args=args)
        )
        status = status.decode()
        if status == "created":
            return status, StreamInfo(config, int(tail), bool(is_closed), False)
        current = await self.info(owner, path)
        if current is None:  # expired in between: as good as created by someone else
            return "conflict", StreamInfo(config, 0, False, False)
        return status, current

    async def info(self, owner: str, path: str) -> StreamInfo | None:
        found = await self.read(owner, path, 0, 0, touch=False)
        return None if found is None else found[0]

    async def append(
        self,
        owner: str,
        path: str,
        content_type: str,
        messages: list[bytes],
        *,
        close: bool = False,
        stream_seq: str = "",
        producer: Producer | None = None,
    ) -> AppendOutcome:
        pid, epoch, pseq = producer if producer is not None else ("", 0, 0)
        args: list[Any] = [
            media_type(content_type) if messages else "",
            stream_seq,
            pid,
            epoch,
            pseq,
            "1" if close else "0",
            "",
            len(messages),
            *messages,
        ]
        status, tail, closed, out_epoch, out_seq = await self._batch.call(
            self._append, self._keys(owner, path), args
        )
        return AppendOutcome(status.decode(), int(tail), bool(closed), int(out_epoch), int(out_seq))

    async def read(
        self, owner: str, path: str, after: int, limit: int, *, touch: bool = True
    ) -> tuple[StreamInfo, list[StoredEvent]] | None:
        args = [after, limit, "1" if touch else "0"]
        reply = await self._batch.call(self._read, self._keys(owner, path), args)
        if not reply:
            return None
        fields, entries = reply
        return info_from([f.decode() for f in fields]), _flat_events(entries)

    async def page(
        self, owner: str, path: str, after: int, limit: int, max_bytes: int
    ) -> tuple[StreamInfo, Chunk] | None:
        args = [after, limit, max_bytes]
        reply = await self._batch.call(self._page, self._keys(owner, path), args)
        if not reply:
            return None
        fields, parts, last = reply
        info = info_from([f.decode() for f in fields])
        body = separator(info.config.content_type).join(parts)
        return info, Chunk(body, len(parts), int(last))

    async def retain(self, owner: str, path: str) -> str:
        status = await self.conn.call(self._retain(keys=self._keys(owner, path)[:1]))
        return str(status.decode())

    async def release(self, owner: str, path: str) -> None:
        while path:
            done = (await self.conn.call(self._release(keys=self._keys(owner, path)))).decode()
            path = done.partition(":")[2] if done.startswith("collected:") else ""

    async def delete(self, owner: str, path: str) -> str:
        status, parent = await self.conn.call(self._delete(keys=self._keys(owner, path)))
        if parent:
            await self.release(owner, parent.decode())
        return str(status.decode())
