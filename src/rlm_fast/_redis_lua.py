"""The Lua scripts of `rlm_fast.redis`: one per operation, each run as one
atomic step on the server (docs/redis.md).

Every script is constant text: callers' values reach it only through KEYS
and ARGV, never by splicing into the source. Each opens with a shebang
(Redis 7.0+), so a writing script is refused whole when the server is out of
memory instead of failing half way, and read-only ones carry `no-writes`.

Numbers are exact: Lua numbers are doubles, so 64-bit values (nanosecond
timestamps, u64 budgets and charges) are split into `{hi, lo}` with
`value = hi * 1e9 + lo` and `0 <= lo < 1e9`; every step on the parts is exact
in a double. They are stored as decimal strings. Replies are arrays whose
first element is a status (`ok`, `notfound`, `terminated`, `expired`, or the
call's own refusal); the Python side turns a status into the same exception
the in-process cores raise.
"""

from __future__ import annotations

__all__ = ["SCRIPTS", "READ_ONLY"]

_PRELUDE = r"""
local B = 1000000000
local U64_MAX = {18446744073, 709551615}
local I64_MAX = {9223372036, 854775807}
local ONE = {0, 1}
local MS_MAX = 281474976710655  -- 2^48 - 1: the ULID time field
local ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'

-- Decimal string (optional leading '-') -> {hi, lo}.
local function big(s)
  local neg = string.byte(s, 1) == 45
  if neg then s = string.sub(s, 2) end
  local n = #s
  local hi, lo = 0, 0
  if n > 9 then
    hi = tonumber(string.sub(s, 1, n - 9))
    lo = tonumber(string.sub(s, n - 8))
  else
    lo = tonumber(s)
  end
  if neg then
    if lo > 0 then return {-hi - 1, B - lo} end
    return {-hi, 0}
  end
  return {hi, lo}
end

-- {hi, lo} -> decimal string.
local function str(a)
  local hi, lo = a[1], a[2]
  if hi == 0 then return string.format('%d', lo) end
  if hi > 0 then return string.format('%d%09d', hi, lo) end
  local h, l = -hi, 0  -- negative: -(value) = h * 1e9 + l
  if lo > 0 then h, l = -hi - 1, B - lo end
  if h == 0 then return string.format('-%d', l) end
  return string.format('-%d%09d', h, l)
end

local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then return {hi + 1, lo - B} end
  return {hi, lo}
end

local function dec(a)  -- a - 1 (a > 0)
  if a[2] > 0 then return {a[1], a[2] - 1} end
  return {a[1] - 1, B - 1}
end

local function cmp(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] and -1 or 1 end
  if a[2] ~= b[2] then return a[2] < b[2] and -1 or 1 end
  return 0
end

local function is_zero(a) return a[1] == 0 and a[2] == 0 end

-- Milliseconds (floored) of a nanosecond time: exact, |ms| < 2^44.
local function ms(t) return t[1] * 1000 + math.floor(t[2] / 1000000) end

local function int(x) return string.format('%d', x) end

-- The time of the call: the manager's clock when it passed one, else the
-- server's TIME (one clock for every host).
local function clock(arg)
  if arg ~= '' then return big(arg) end
  local t = redis.call('TIME')
  return {tonumber(t[1]), tonumber(t[2]) * 1000}
end

local function server_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- When a key of a session expiring at `expires` may be dropped by Redis:
-- the session's remaining life (on the manager's clock) plus the grace,
-- from the server's now. With the server clock: expires + grace.
local function deadline(now, expires, grace_ms)
  return server_ms() + (ms(expires) - ms(now)) + grace_ms
end

-- Move a key's TTL deadline later, never earlier (-1: no TTL yet).
local function keep_until(key, at)
  local current = redis.call('PEXPIRETIME', key)
  if current == -1 or (current >= 0 and current < at) then
    redis.call('PEXPIREAT', key, int(at))
  end
end

-- Give a shared key that has no TTL yet the namespace's deadline.
local function follow(key, leader)
  if redis.call('PEXPIRETIME', key) == -1 then
    local at = redis.call('PEXPIRETIME', leader)
    if at > 0 then redis.call('PEXPIREAT', key, int(at)) end
  end
end

-- The fields of a session a write may touch: existence, then TERMINATED,
-- then expiry by clock or by state (SPEC 10's order). Returns the HMGET of
-- state, expires_ns and the extra fields, or nil and the status.
local function live(key, now, ...)
  local f = redis.call('HMGET', key, 'state', 'expires_ns', ...)
  if not f[1] then return nil, 'notfound' end
  if f[1] == 'Terminated' then return nil, 'terminated' end
  if f[1] == 'Expired' or cmp(now, big(f[2])) > 0 then return nil, 'expired' end
  return f
end
"""

# name -> body. KEYS/ARGV are listed at the top of each.
_BODIES: dict[str, str] = {
    # KEYS: stats, expiry, vms. ARGV: now, session key prefix, 16 random
    # base32 chars, duration ns, grace ms, token budget, time budget ms,
    # max depth.
    "create": r"""
local now = clock(ARGV[1])
local expires = add(now, big(ARGV[4]))
if cmp(expires, I64_MAX) > 0 then return {'overflow'} end
local t = ms(now)
if t < 0 then t = 0 elseif t > MS_MAX then t = MS_MAX end
local chars = {}
for i = 10, 1, -1 do
  local d = t % 32
  chars[i] = string.sub(ALPHABET, d + 1, d + 1)
  t = (t - d) / 32
end
local sid = table.concat(chars) .. ARGV[3]
local key = ARGV[2] .. sid
if redis.call('EXISTS', key) == 1 then return {'exists'} end
local created, until_ = str(now), str(expires)
redis.call('HSET', key, 'state', 'Initializing', 'created_ns', created,
  'expires_ns', until_, 'extension_count', '0', 'depth', '0',
  'token_budget', ARGV[6], 'tokens_used', '0', 'time_budget_ms', ARGV[7],
  'time_used_ms', '0', 'max_depth', ARGV[8], 'snapshot_count', '0')
redis.call('ZADD', KEYS[2], int(ms(expires)), sid)
redis.call('HINCRBY', KEYS[1], 'created', 1)
local at = deadline(now, expires, tonumber(ARGV[5]))
redis.call('PEXPIREAT', key, int(at))
keep_until(KEYS[1], at)
keep_until(KEYS[2], at)
keep_until(KEYS[3], at)
return {'ok', sid, created, until_}
""",
    # KEYS: session. ARGV: now, state value.
    "update_state": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return {err} end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
return {'ok'}
""",
    # KEYS: session. ARGV: now. Reply: 1 or 0.
    "is_valid": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return 0 end
return 1
""",
    # KEYS: sessions. ARGV: now. Reply: 1 or 0 per session, at one instant.
    "validate_many": r"""
local now = clock(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local _, err = live(key, now)
  out[i] = err and 0 or 1
end
return out
""",
    # KEYS: session. ARGV: now. Reply: {'ok', HGETALL}.
    "validate": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return {err} end
return {'ok', redis.call('HGETALL', KEYS[1])}
""",
    # KEYS: session, expiry, stats, vms. ARGV: now, sid, increment ns,
    # max extensions, grace ms. Reply: {'ok', HGETALL}.
    "extend": r"""
local now = clock(ARGV[1])
local f, err = live(KEYS[1], now, 'extension_count')
if err then return {err} end
local count = big(f[3])
if cmp(count, big(ARGV[4])) >= 0 then return {'maxext'} end
local expires = add(big(f[2]), big(ARGV[3]))
if cmp(expires, I64_MAX) > 0 then return {'overflow'} end
redis.call('HSET', KEYS[1], 'expires_ns', str(expires),
  'extension_count', str(add(count, ONE)))
redis.call('ZADD', KEYS[2], int(ms(expires)), ARGV[2])
local at = deadline(now, expires, tonumber(ARGV[5]))
keep_until(KEYS[1], at)
keep_until(KEYS[2], at)
keep_until(KEYS[3], at)
keep_until(KEYS[4], at)
return {'ok', redis.call('HGETALL', KEYS[1])}
""",
    # KEYS: session, expiry, vms, stats. ARGV: sid.
    "destroy": r"""
local f = redis.call('HMGET', KEYS[1], 'state', 'vm')
if not f[1] then return {'notfound'} end
if f[2] and redis.call('HGET', KEYS[3], f[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[3], f[2])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'destroyed', 1)
return {'ok'}
""",
    # KEYS: expiry, vms, stats. ARGV: now, session key prefix, batch size,
    # candidates already skipped. Reply: {now, more (0/1), skipped, {ids}}.
    "cleanup": r"""
local now = clock(ARGV[1])
local limit, skipped = tonumber(ARGV[3]), tonumber(ARGV[4])
-- The score (ms) only narrows the search; the exact ns decide.
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(ms(now)),
  'LIMIT', skipped, limit)
local removed, evicted = {}, false
for _, sid in ipairs(candidates) do
  local key = ARGV[2] .. sid
  local f = redis.call('HMGET', key, 'expires_ns', 'vm')
  if not f[1] then
    -- Dropped by its TTL long after it expired: forget it here too.
    evicted = true
    redis.call('ZREM', KEYS[1], sid)
    removed[#removed + 1] = sid
  elseif cmp(big(f[1]), now) < 0 then
    if f[2] and redis.call('HGET', KEYS[2], f[2]) == sid then
      redis.call('HDEL', KEYS[2], f[2])
    end
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], sid)
    removed[#removed + 1] = sid
  else
    skipped = skipped + 1  -- same millisecond as now, not yet past it
  end
end
if evicted then
  -- An evicted session took its VM field along: drop VM entries that
  -- point at sessions that no longer exist.
  local all = redis.call('HGETALL', KEYS[2])
  for i = 1, #all, 2 do
    if redis.call('EXISTS', ARGV[2] .. all[i + 1]) == 0 then
      redis.call('HDEL', KEYS[2], all[i])
    end
  end
end
if #removed > 0 then redis.call('HINCRBY', KEYS[3], 'expired', #removed) end
local more = 0
if #candidates == limit then more = 1 end
return {str(now), more, skipped, removed}
""",
    # KEYS: session, vms, expiry. ARGV: now, sid, vm, session key prefix.
    "assign_vm": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), 'vm')
if err then return {err} end
local sid, vm, current = ARGV[2], ARGV[3], f[3]
if current ~= vm then
  -- The session leaves its old VM ...
  if current and redis.call('HGET', KEYS[2], current) == sid then
    redis.call('HDEL', KEYS[2], current)
  end
  -- ... and the VM leaves its old session.
  local previous = redis.call('HGET', KEYS[2], vm)
  if previous then
    local pkey = ARGV[4] .. previous
    if redis.call('HGET', pkey, 'vm') == vm then redis.call('HDEL', pkey, 'vm') end
  end
  redis.call('HSET', KEYS[2], vm, sid)
  follow(KEYS[2], KEYS[3])
end
redis.call('HSET', KEYS[1], 'vm', vm, 'state', 'Ready')
return {'ok'}
""",
    # KEYS: session, vms. ARGV: sid. Reply: {'ok'} or {'ok', vm}.
    "release_vm": r"""
local f = redis.call('HMGET', KEYS[1], 'state', 'vm')
if not f[1] then return {'notfound'} end
if not f[2] then return {'ok'} end
if redis.call('HGET', KEYS[2], f[2]) == ARGV[1] then redis.call('HDEL', KEYS[2], f[2]) end
redis.call('HDEL', KEYS[1], 'vm')
return {'ok', f[2]}
""",
    # KEYS: session. ARGV: now, field, value.
    "set_context": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return {err} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return {'ok'}
""",
    # KEYS: session. ARGV: field. Reply: {'ok'} or {'ok', value}.
    "get_context": r"""
local f = redis.call('HMGET', KEYS[1], 'state', ARGV[1])
if not f[1] then return {'notfound'} end
if f[2] then return {'ok', f[2]} end
return {'ok'}
""",
    # KEYS: session. ARGV: now, field. Reply: {'ok'} or {'ok', old value}.
    "delete_context": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), ARGV[2])
if err then return {err} end
if not f[3] then return {'ok'} end
redis.call('HDEL', KEYS[1], ARGV[2])
return {'ok', f[3]}
""",
    # KEYS: session. ARGV: now, token budget, tokens used, time budget,
    # time used, max depth, depth.
    "update_budget": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return {err} end
redis.call('HSET', KEYS[1], 'token_budget', ARGV[2], 'tokens_used', ARGV[3],
  'time_budget_ms', ARGV[4], 'time_used_ms', ARGV[5], 'max_depth', ARGV[6],
  'depth', ARGV[7])
return {'ok'}
""",
    # KEYS: session. ARGV: now. Reply: {'ok', depth} or {'depth', depth, max}.
    "increment": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), 'depth', 'max_depth')
if err then return {err} end
local depth = big(f[3])
if cmp(depth, big(f[4])) >= 0 then return {'depth', f[3], f[4]} end
local new = str(add(depth, ONE))
redis.call('HSET', KEYS[1], 'depth', new)
return {'ok', new}
""",
    # KEYS: session. ARGV: now. Reply: {'ok', depth}.
    "decrement": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), 'depth')
if err then return {err} end
local depth = big(f[3])
if is_zero(depth) then return {'ok', '0'} end
local new = str(dec(depth))
redis.call('HSET', KEYS[1], 'depth', new)
return {'ok', new}
""",
    # The exit of recursion(): -1 whatever the state, never an error.
    # KEYS: session.
    "leave_recursion": r"""
local depth = redis.call('HGET', KEYS[1], 'depth')
if depth and depth ~= '0' then
  redis.call('HSET', KEYS[1], 'depth', str(dec(big(depth))))
end
return {'ok'}
""",
    # KEYS: session. ARGV: now, used field, budget field, amount.
    # Reply: {'ok', total, budget} or {'u64'} (refused whole).
    "charge": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), ARGV[2], ARGV[3])
if err then return {err} end
local total = add(big(f[3]), big(ARGV[4]))
if cmp(total, U64_MAX) > 0 then return {'u64'} end
local text = str(total)
redis.call('HSET', KEYS[1], ARGV[2], text)
return {'ok', text, f[4]}
""",
    # KEYS: session. ARGV: now. Reply: {'ok', the six budget fields}.
    "check_budget": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), 'token_budget', 'tokens_used',
  'time_budget_ms', 'time_used_ms', 'max_depth', 'depth')
if err then return {err} end
return {'ok', f[3], f[4], f[5], f[6], f[7], f[8]}
""",
    # KEYS: session. ARGV: now, max snapshots (0: no limit), '1' to set
    # as current, snapshot id.
    "snapshot_created": r"""
local f, err = live(KEYS[1], clock(ARGV[1]), 'snapshot_count')
if err then return {err} end
local count, maximum = big(f[3]), big(ARGV[2])
if not is_zero(maximum) and cmp(count, maximum) >= 0 then return {'maxsnap'} end
redis.call('HSET', KEYS[1], 'snapshot_count', str(add(count, ONE)))
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'snapshot', ARGV[4]) end
return {'ok'}
""",
    # KEYS: session. ARGV: now, snapshot id.
    "snapshot_restored": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return {err} end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[2])
return {'ok'}
""",
    # KEYS: session. ARGV: now.
    "clear_snapshots": r"""
local _, err = live(KEYS[1], clock(ARGV[1]))
if err then return {err} end
redis.call('HDEL', KEYS[1], 'snapshot')
redis.call('HSET', KEYS[1], 'snapshot_count', '0')
return {'ok'}
""",
    # KEYS: stats, expiry, vms. Reply: created, destroyed, expired,
    # active, with VM.
    "stats": r"""
local c = redis.call('HMGET', KEYS[1], 'created', 'destroyed', 'expired')
return {c[1] or '0', c[2] or '0', c[3] or '0',
  redis.call('ZCARD', KEYS[2]), redis.call('HLEN', KEYS[3])}
""",
    # KEYS: expiry. ARGV: session key prefix. Reply: sid, HGETALL, ...
    "list": r"""
local out = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HGETALL', ARGV[1] .. sid)
  if #fields > 0 then
    out[#out + 1] = sid
    out[#out + 1] = fields
  end
end
return out
""",
    # list and stats in one step (dump). KEYS: expiry, stats, vms.
    # ARGV: session key prefix. Reply: {stats..., {sid, HGETALL, ...}}.
    "export": r"""
local out = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local fields = redis.call('HGETALL', ARGV[1] .. sid)
  if #fields > 0 then
    out[#out + 1] = sid
    out[#out + 1] = fields
  end
end
local c = redis.call('HMGET', KEYS[2], 'created', 'destroyed', 'expired')
return {c[1] or '0', c[2] or '0', c[3] or '0',
  redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3]), out}
""",
    # Fill an empty namespace, all or nothing (load). KEYS: stats, expiry,
    # vms. ARGV: now, session key prefix, grace ms, created, destroyed,
    # expired, then per session: sid, expires ns, vm ('' for none), n,
    # and n field/value strings.
    "restore": r"""
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then return {'notempty'} end
local i = 7
while i <= #ARGV do
  if redis.call('EXISTS', ARGV[2] .. ARGV[i]) == 1 then return {'notempty'} end
  i = i + 4 + tonumber(ARGV[i + 3])
end
local now, grace, floor_ms = clock(ARGV[1]), tonumber(ARGV[3]), server_ms()
local latest = nil
i = 7
while i <= #ARGV do
  local sid, vm, n = ARGV[i], ARGV[i + 2], tonumber(ARGV[i + 3])
  local key = ARGV[2] .. sid
  local expires = big(ARGV[i + 1])
  for first = 1, n, 200 do  -- unpack() in chunks: Lua's stack is finite
    local chunk = {}
    for j = first, math.min(first + 199, n) do chunk[#chunk + 1] = ARGV[i + 3 + j] end
    redis.call('HSET', key, unpack(chunk))
  end
  redis.call('ZADD', KEYS[2], int(ms(expires)), sid)
  if vm ~= '' then redis.call('HSET', KEYS[3], vm, sid) end
  -- Long expired already: keep it for the grace (at least 1 s) from now,
  -- so that a cleanup still sees and counts it.
  local at = math.max(deadline(now, expires, grace), floor_ms + grace + 1000)
  redis.call('PEXPIREAT', key, int(at))
  if latest == nil or at > latest then latest = at end
  i = i + 4 + n
end
redis.call('HSET', KEYS[1], 'created', ARGV[4], 'destroyed', ARGV[5], 'expired', ARGV[6])
if latest == nil then latest = floor_ms + grace + 1000 end
keep_until(KEYS[1], latest)
keep_until(KEYS[2], latest)
keep_until(KEYS[3], latest)
return {'ok'}
""",
}

# Scripts that only read: they may run on a replica and when the server is
# out of memory.
READ_ONLY = frozenset({"is_valid", "validate_many", "validate", "get_context", "check_budget", "stats", "list", "export"})

SCRIPTS: dict[str, str] = {
    name: ("#!lua flags=no-writes\n" if name in READ_ONLY else "#!lua\n") + _PRELUDE + body
    for name, body in _BODIES.items()
}
