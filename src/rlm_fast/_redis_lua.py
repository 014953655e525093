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
call's own refusal); `terminated` and `expired` are followed by the id of the
session that failed, the called one or an ancestor (call trees: validity
flows down, docs/trees.md). The Python side turns a status into the same
exception the in-process cores raise.

Keys: no script builds a key. Every key a script reads or writes is in its
KEYS: a session's ancestors (named by the caller, checked against the
session's `ancestors` field: 'path' answers the right ones), the sessions
and children sets of a removal or a listing (read by the caller first,
re-checked here: 'retry' when they changed), and a new session's key
(candidates named by the caller: 'skew' when none is of now's millisecond).
See docs/redis.md, "Keys".
"""

from __future__ import annotations

__all__ = ["SCRIPTS", "READ_ONLY", "COUNTING"]

_PRELUDE = r"""
local B = 1000000000
local U64_MAX = {18446744073, 709551615}
local I64_MAX = {9223372036, 854775807}
local ONE = {0, 1}
local MS_MAX = 281474976710655  -- 2^48 - 1: the ULID time field
local ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
-- SessionStats' refusal counters, in order, and the reply status each
-- counts (docs/lifecycle.md).
local REFUSAL_FIELDS = {'rejected_not_found', 'rejected_invalid_token',
  'rejected_terminated', 'rejected_expired', 'rejected_tokens',
  'rejected_time', 'rejected_depth'}
local COUNTED = {notfound = 'rejected_not_found', invalid = 'rejected_invalid_token',
  terminated = 'rejected_terminated', expired = 'rejected_expired',
  tokens = 'rejected_tokens', time = 'rejected_time', depth = 'rejected_depth'}

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

-- a - b (a >= b)
local function sub(a, b)
  local hi, lo = a[1] - b[1], a[2] - b[2]
  if lo < 0 then return {hi - 1, lo + B} end
  return {hi, lo}
end

-- A new session id: the ULID time of `now` (ms, clamped to the field) and
-- 16 random base32 characters from the caller.
local function new_sid(now, random)
  local t = ms(now)
  if t < 0 then t = 0 elseif t > MS_MAX then t = MS_MAX end
  local chars = {}
  for i = 10, 1, -1 do
    local d = t % 32
    chars[i] = string.sub(ALPHABET, d + 1, d + 1)
    t = (t - d) / 32
  end
  return table.concat(chars) .. random
end

-- Keys of a namespace: '{ns}:s:<id>' is a session, '{ns}:c:<id>' the set of
-- its children's ids; an id is a 26-character ULID. Scripts only take ids
-- out of keys they were given, never build keys.
local function sid_of(key) return string.sub(key, -26) end

-- The key of a new session `sid` among the candidates the caller named in
-- KEYS[first..last] (the caller cannot know the server's clock to the
-- millisecond, so it names a few, one per likely millisecond), or nil.
local function new_key(sid, first, last)
  for i = first, last do
    if sid_of(KEYS[i]) == sid then return KEYS[i] end
  end
  return nil
end

-- The keys of a session's ancestors a caller named, root first: the last
-- ARGV says how many, from KEYS[first] on.
local function anc_keys(first)
  local t = {}
  for i = 1, tonumber(ARGV[#ARGV]) do t[i] = KEYS[first + i - 1] end
  return t
end

-- The path of a session from its root down to it (SPEC 11): a list of
-- {key, sid, f} where f is the HMGET of state, expires_ns, ancestors and
-- the extra fields. The caller names the ancestors' keys (`anc`, root
-- first, from KEYS): they must be the ones the session's `ancestors` field
-- lists (their ids, root first, space separated; a root has none), else
-- nil, 'path' and that list: the caller runs the script again with those
-- keys (a session's ancestors never change). Each ancestor's own list must
-- be the prefix before it ('cycle' otherwise: a corrupt namespace). The
-- checks run root first, for each session TERMINATED then expiry by clock
-- or by state (SPEC 10's order): validity flows down. Returns the path, or
-- nil, the status and the id of the session that failed. An ancestor whose
-- key Redis dropped (its TTL: it expired long ago) counts as expired.
local function path(key, anc, now, ...)
  local f = redis.call('HMGET', key, 'state', 'expires_ns', 'ancestors', ...)
  if not f[1] then return nil, 'notfound' end
  local names = {}
  for i, k in ipairs(anc) do names[i] = sid_of(k) end
  local want = f[3] or ''
  if table.concat(names, ' ') ~= want then return nil, 'path', want end
  local down = {}
  for i, k in ipairs(anc) do
    local p = redis.call('HMGET', k, 'state', 'expires_ns', 'ancestors', ...)
    if not p[1] then return nil, 'expired', names[i] end
    if (p[3] or '') ~= table.concat(names, ' ', 1, i - 1) then return nil, 'cycle', names[i] end
    down[i] = {key = k, sid = names[i], f = p}
  end
  down[#down + 1] = {key = key, sid = sid_of(key), f = f}
  for _, node in ipairs(down) do
    local state = node.f[1]
    if state == 'Terminated' then return nil, 'terminated', node.sid end
    if state == 'Expired' or cmp(now, big(node.f[2])) > 0 then return nil, 'expired', node.sid end
  end
  return down
end

-- The fields of a session a write may touch, after the checks of its path:
-- the HMGET of state, expires_ns, ancestors and the extra fields, or nil,
-- the status and the failing session's id (or the ancestors' list).
local function live(key, anc, now, ...)
  local down, err, who = path(key, anc, now, ...)
  if not down then return nil, err, who end
  return down[#down].f
end

-- The sessions a caller named, from KEYS[first] to KEYS[last], as pairs
-- (session key, its children set key): sid -> {key, kids}.
local function named_from(first, last)
  local named = {}
  for i = first, last - 1, 2 do
    named[sid_of(KEYS[i])] = {key = KEYS[i], kids = KEYS[i + 1]}
  end
  return named
end

-- A session's subtree, itself first, read through its children sets: the
-- ids, or nil when some descendant is not among the named sessions (the
-- tree grew since the caller read it: it reads again). Reads only.
local function subtree(sid, named)
  local out, seen, stack = {}, {[sid] = true}, {sid}
  while #stack > 0 do
    local s = table.remove(stack)
    local node = named[s]
    if not node then return nil end
    out[#out + 1] = s
    for _, child in ipairs(redis.call('SMEMBERS', node.kids)) do
      if not seen[child] then
        seen[child] = true
        stack[#stack + 1] = child
      end
    end
  end
  return out
end

-- Remove the named sessions `ids`: their keys, children sets, index
-- entries and the VM mappings that still belong to them. Appends to `out`,
-- for each session that was still in the table, its id and its last fields
-- (HGETALL; empty when Redis's TTL dropped its hash; a session already
-- forgotten is not counted twice). Records in `dropped` each id whose hash
-- was gone -> its place in `out`.
local function remove_all(ids, named, expiry, vms, out, dropped)
  for _, sid in ipairs(ids) do
    local node = named[sid]
    local fields = redis.call('HGETALL', node.key)
    local vm = nil
    for i = 1, #fields, 2 do
      if fields[i] == 'vm' then vm = fields[i + 1] end
    end
    if vm and redis.call('HGET', vms, vm) == sid then redis.call('HDEL', vms, vm) end
    local present = redis.call('DEL', node.key)
    redis.call('DEL', node.kids)
    if redis.call('ZREM', expiry, sid) + present > 0 then
      out[#out + 1] = sid
      out[#out + 1] = fields
      if present == 0 then dropped[sid] = #out end
    end
  end
end

-- After a removal met sessions whose hash Redis dropped (`dropped`, from
-- remove_all): their `vm` field went with the hash, but the VM map still
-- names them. Drop those entries and give each such session in `out` the
-- fields {'vm', id}.
local function reconcile_vms(vms, dropped, out)
  if next(dropped) == nil then return end
  local all = redis.call('HGETALL', vms)
  for i = 1, #all, 2 do
    local at = dropped[all[i + 1]]
    if at then
      redis.call('HDEL', vms, all[i])
      out[at] = {'vm', all[i]}
    end
  end
end

-- Every session of the index KEYS[index], read from the keys the caller
-- named from KEYS[first] on (in the index's order, as it read them): {sid,
-- HGETALL, ...}, or nil when the index changed since (the caller retries).
local function listing(index, first)
  local ids = redis.call('ZRANGE', KEYS[index], 0, -1)
  if #ids ~= #KEYS - first + 1 then return nil end
  local out = {}
  for i, sid in ipairs(ids) do
    local key = KEYS[first + i - 1]
    if sid_of(key) ~= sid then return nil end
    local fields = redis.call('HGETALL', key)
    if #fields > 0 then
      out[#out + 1] = sid
      out[#out + 1] = fields
    end
  end
  return out
end

-- The deadline of the namespace's shared keys (index, VM map, counters)
-- for a session key dropped at `at`: a margin later, so they outlive every
-- session hash and a cleanup still reports a session Redis dropped.
local function shared(at, grace_ms)
  return at + math.max(grace_ms, 60000)
end

-- The first exhausted budget on a path whose fields 4..9 are token budget,
-- tokens used, time budget, time used, max depth, depth: root first,
-- tokens, then time, then depth, for each session (the refusal reply), or
-- nil when none is.
local function exhausted(down)
  for _, node in ipairs(down) do
    local f = node.f
    if cmp(big(f[5]), big(f[4])) >= 0 then return {'tokens', f[5], f[4]} end
    if cmp(big(f[7]), big(f[6])) >= 0 then return {'time', f[7], f[6]} end
    if cmp(big(f[9]), big(f[8])) > 0 then return {'depth', f[9], f[8]} end
  end
  return nil
end

-- Give a children set (`kids`) at least the TTL deadline of its parent's
-- key and of `at` (a child's deadline).
local function keep_kids(parent_key, kids, at)
  local current = redis.call('PEXPIRETIME', parent_key)
  if current > at then at = current end
  keep_until(kids, at)
end
"""

# name -> body. KEYS/ARGV are listed at the top of each.
_BODIES: dict[str, str] = {
    # KEYS: stats, expiry, vms, then the candidate keys of the new session
    # (its id's time is now's millisecond: one key per millisecond the
    # caller thinks likely). ARGV: now, (unused), 16 random base32 chars,
    # duration ns, grace ms, token budget, time budget ms, max depth.
    # Reply: {'ok', sid, created, expires}, {'overflow'}, {'exists'}, or
    # {'skew', now's ms} when no candidate was now's.
    "create": r"""
local now = clock(ARGV[1])
local expires = add(now, big(ARGV[4]))
if cmp(expires, I64_MAX) > 0 then return {'overflow'} end
local sid = new_sid(now, ARGV[3])
local key = new_key(sid, 4, #KEYS)
if not key then return {'skew', int(ms(now))} end
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
local later = shared(at, tonumber(ARGV[5]))
keep_until(KEYS[1], later)
keep_until(KEYS[2], later)
keep_until(KEYS[3], later)
return {'ok', sid, created, until_}
""",
    # A child of KEYS[1] (docs/trees.md): the parent's path is checked, then
    # the depth, then the budgets ('' takes what the parent has left).
    # KEYS: parent, stats, expiry, vms, the parent's children set, the
    # parent's ancestors, the new session's candidate keys (as for create).
    # ARGV: now, 16 random base32 chars, duration ns, grace ms, token
    # budget, time budget ms, number of ancestors.
    # Reply: {'ok', sid, created, expires, depth, max depth, token budget,
    # time budget, root}, {'depth', depth, max}, {'budget', field, asked,
    # left} or an error status and the failing session's id.
    "create_child": r"""
local now = clock(ARGV[1])
local down, err, who = path(KEYS[1], anc_keys(6), now, 'depth', 'max_depth',
  'token_budget', 'tokens_used', 'time_budget_ms', 'time_used_ms')
if not down then return {err, who} end
local parent = down[#down]
local f = parent.f
local depth = add(big(f[4]), ONE)
if cmp(depth, big(f[5])) > 0 then return {'depth', str(depth), f[5]} end
local budgets = {}
for i, spec in ipairs({{'token_budget', f[6], f[7], ARGV[5]}, {'time_budget_ms', f[8], f[9], ARGV[6]}}) do
  local budget, used = big(spec[2]), big(spec[3])
  local left = {0, 0}
  if cmp(budget, used) > 0 then left = sub(budget, used) end
  if spec[4] ~= '' then
    if cmp(big(spec[4]), left) > 0 then return {'budget', spec[1], spec[4], str(left)} end
    budgets[i] = spec[4]
  else
    budgets[i] = str(left)
  end
end
local expires = add(now, big(ARGV[3]))
local limit = big(f[2])
if cmp(expires, limit) > 0 then expires = limit end
local sid = new_sid(now, ARGV[2])
local key = new_key(sid, 6 + tonumber(ARGV[#ARGV]), #KEYS - 2)
if not key then return {'skew', int(ms(now))} end
if redis.call('EXISTS', key) == 1 then return {'exists'} end
local created, until_, start = str(now), str(expires), str(depth)
local root = down[1].sid
local ancestors = parent.sid
if f[3] then ancestors = f[3] .. ' ' .. parent.sid end
redis.call('HSET', key, 'state', 'Initializing', 'created_ns', created,
  'expires_ns', until_, 'extension_count', '0', 'depth', start,
  'token_budget', budgets[1], 'tokens_used', '0', 'time_budget_ms', budgets[2],
  'time_used_ms', '0', 'max_depth', f[5], 'snapshot_count', '0',
  'parent', parent.sid, 'root', root, 'start_depth', start,
  'ancestors', ancestors)
redis.call('SADD', KEYS[5], sid)
redis.call('ZADD', KEYS[3], int(ms(expires)), sid)
redis.call('HINCRBY', KEYS[2], 'created', 1)
local at = deadline(now, expires, tonumber(ARGV[4]))
redis.call('PEXPIREAT', key, int(at))
keep_kids(KEYS[1], KEYS[5], at)
local later = shared(at, tonumber(ARGV[4]))
keep_until(KEYS[2], later)
keep_until(KEYS[3], later)
keep_until(KEYS[4], later)
return {'ok', sid, created, until_, start, f[5], budgets[1], budgets[2], root}
""",
    # KEYS: session, its children set, then the keys of the children the
    # caller read from that set. Reply: {'ok', {child ids}} (in no order;
    # ids whose key Redis dropped are left out), or {'retry'} when the set
    # changed since.
    "children": r"""
if redis.call('EXISTS', KEYS[1]) == 0 then return {'notfound'} end
local members = redis.call('SMEMBERS', KEYS[2])
local named = {}
for i = 3, #KEYS - 2 do named[sid_of(KEYS[i])] = KEYS[i] end
if #members ~= #KEYS - 4 then return {'retry'} end
local out = {}
for _, sid in ipairs(members) do
  local key = named[sid]
  if not key then return {'retry'} end
  if redis.call('EXISTS', key) == 1 then out[#out + 1] = sid end
end
return {'ok', out}
""",
    # KEYS: session. ARGV: now, state value.
    "update_state": r"""
local _, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]))
if err then return {err, who} end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
return {'ok'}
""",
    # KEYS: session. ARGV: now. Reply: {'ok'} or the refusal (counted).
    "is_valid": r"""
local _, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]))
if err then return {err, who} end
return {'ok'}
""",
    # KEYS: the sessions, then each one's ancestors (root first) in turn.
    # ARGV: now, then each session's number of ancestors. Reply: {'ok', {1
    # or 0 per session}}, at one instant, or {'path', {index, ancestors,
    # ...}} for sessions whose ancestors the caller did not name right.
    "validate_many": r"""
local now = clock(ARGV[1])
local n = #ARGV - 1
local at = n + 1
local out, wrong = {}, {}
for i = 1, n do
  local anc = {}
  for j = 1, tonumber(ARGV[i + 1]) do anc[j] = KEYS[at + j - 1] end
  at = at + #anc
  local _, err, who = live(KEYS[i], anc, now)
  if err == 'path' then
    wrong[#wrong + 1] = i
    wrong[#wrong + 1] = who
  end
  out[i] = err and 0 or 1
end
if #wrong > 0 then return {'path', wrong} end
return {'ok', out}
""",
    # KEYS: session. ARGV: now. Reply: {'ok', HGETALL}.
    "validate": r"""
local _, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]))
if err then return {err, who} end
return {'ok', redis.call('HGETALL', KEYS[1])}
""",
    # A child's expiry grows as a root's (not capped by its parent); its
    # children set and its parent's keep TTLs at least as late as its key.
    # KEYS: session, expiry, stats, vms, its children set, its parent's
    # children set (a root: its own again), its ancestors. ARGV: now, sid,
    # increment ns, max extensions, grace ms, number of ancestors.
    # Reply: {'ok', HGETALL}.
    "extend": r"""
local now = clock(ARGV[1])
local f, err, who = live(KEYS[1], anc_keys(7), now, 'extension_count')
if err then return {err, who} end
local count = big(f[4])
if cmp(count, big(ARGV[4])) >= 0 then return {'maxext'} end
local expires = add(big(f[2]), big(ARGV[3]))
if cmp(expires, I64_MAX) > 0 then return {'overflow'} end
redis.call('HSET', KEYS[1], 'expires_ns', str(expires),
  'extension_count', str(add(count, ONE)))
redis.call('ZADD', KEYS[2], int(ms(expires)), ARGV[2])
local at = deadline(now, expires, tonumber(ARGV[5]))
keep_until(KEYS[1], at)
local later = shared(at, tonumber(ARGV[5]))
keep_until(KEYS[2], later)
keep_until(KEYS[3], later)
keep_until(KEYS[4], later)
keep_until(KEYS[5], at)
if f[3] then keep_until(KEYS[6], at) end
return {'ok', redis.call('HGETALL', KEYS[1])}
""",
    # The session and its whole subtree, in any state. KEYS: expiry, vms,
    # stats, then pairs (session key, children set key) for the session,
    # its parent (if it has one) and every descendant, as the caller read
    # them. ARGV: sid, the parent's id as read ('' for none). Reply: {'ok',
    # {sid, last fields, ...}}, the session first (docs/lifecycle.md), or
    # {'retry'} when the tree changed since the caller read it.
    "destroy": r"""
local named = named_from(4, #KEYS - 2)
local node = named[ARGV[1]]
local f = redis.call('HMGET', node.key, 'state', 'parent')
if not f[1] then return {'notfound'} end
if (f[2] or '') ~= ARGV[2] then return {'retry'} end
local ids = subtree(ARGV[1], named)
if not ids then return {'retry'} end
if f[2] then redis.call('SREM', named[f[2]].kids, ARGV[1]) end
local removed, dropped = {}, {}
remove_all(ids, named, KEYS[1], KEYS[2], removed, dropped)
reconcile_vms(KEYS[2], dropped, removed)
redis.call('HINCRBY', KEYS[3], 'destroyed', int(#removed / 2))
return {'ok', removed}
""",
    # Sessions with expires_at < now, each with its subtree. First every
    # index entry of an earlier millisecond than now (all expired), at most
    # `batch` of them; when fewer, also those of now's millisecond, where the
    # exact ns decide. KEYS: expiry, vms, stats, then pairs (session key,
    # children set key) for every candidate, the candidates' parents and
    # their descendants, as the caller read them. ARGV: now (always given:
    # the caller read TIME when it has no clock), batch size, then the
    # candidates' ids as the caller read them. Reply: {now, more (0/1),
    # {sid, last fields, ...}}, or {'retry'} when the index or a tree changed
    # since the caller read them.
    "cleanup": r"""
local now = clock(ARGV[1])
local limit = tonumber(ARGV[2])
local now_ms = int(ms(now))
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now_ms,
  'LIMIT', 0, limit)
local full = #candidates == limit
if not full then
  for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now_ms, now_ms)) do
    candidates[#candidates + 1] = sid
  end
end
if #candidates ~= #ARGV - 2 then return {'retry'} end
local named = named_from(4, #KEYS)
-- Everything is checked before anything is written.
local plan = {}
for i, sid in ipairs(candidates) do
  if sid ~= ARGV[i + 2] or not named[sid] then return {'retry'} end
  local f = redis.call('HMGET', named[sid].key, 'expires_ns', 'parent')
  -- Dropped by its TTL long after it expired, or expired now.
  if not f[1] or cmp(big(f[1]), now) < 0 then
    local ids = subtree(sid, named)
    if not ids or (f[2] and not named[f[2]]) then return {'retry'} end
    plan[#plan + 1] = {sid, f[2], ids}
  end
end
local removed, dropped = {}, {}
for _, p in ipairs(plan) do
  if redis.call('ZSCORE', KEYS[1], p[1]) then  -- not gone with an ancestor
    if p[2] then redis.call('SREM', named[p[2]].kids, p[1]) end
    remove_all(p[3], named, KEYS[1], KEYS[2], removed, dropped)
  end
end
reconcile_vms(KEYS[2], dropped, removed)
local n = int(#removed / 2)
if #removed > 0 then redis.call('HINCRBY', KEYS[3], 'expired', n) end
-- Another batch only when this one was full and made progress (an entry
-- it could not remove would otherwise come back for ever).
local more = 0
if full and #removed > 0 then more = 1 end
return {str(now), more, removed}
""",
    # KEYS: session, vms, expiry, the VM's holder as the caller read it (or
    # the session again when none), the session's ancestors. ARGV: now,
    # sid, vm, the holder's id ('' for none), number of ancestors.
    # Reply: {'ok'}, {'ok', previous holder} when the VM moved, or
    # {'retry'} when the VM's holder changed since the caller read it.
    "assign_vm": r"""
local f, err, who = live(KEYS[1], anc_keys(5), clock(ARGV[1]), 'vm')
if err then return {err, who} end
local sid, vm, current = ARGV[2], ARGV[3], f[4]
if current ~= vm then
  local previous = redis.call('HGET', KEYS[2], vm)
  if (previous or '') ~= ARGV[4] then return {'retry'} end
  -- The session leaves its old VM ...
  if current and redis.call('HGET', KEYS[2], current) == sid then
    redis.call('HDEL', KEYS[2], current)
  end
  -- ... and the VM leaves its old session.
  if previous and redis.call('HGET', KEYS[4], 'vm') == vm then
    redis.call('HDEL', KEYS[4], 'vm')
  end
  redis.call('HSET', KEYS[2], vm, sid)
  follow(KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'vm', vm, 'state', 'Ready')
  if previous and previous ~= sid then return {'ok', previous} end
  return {'ok'}
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
local _, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]))
if err then return {err, who} end
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
local f, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]), ARGV[2])
if err then return {err, who} end
if not f[4] then return {'ok'} end
redis.call('HDEL', KEYS[1], ARGV[2])
return {'ok', f[4]}
""",
    # KEYS: session. ARGV: now, token budget, tokens used, time budget,
    # time used, max depth, depth. Reply: {'ok'} or {'start', start depth}
    # (a child's depth never goes below where it started).
    "update_budget": r"""
local f, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]), 'start_depth')
if err then return {err, who} end
if f[4] and cmp(big(ARGV[7]), big(f[4])) < 0 then return {'start', f[4]} end
redis.call('HSET', KEYS[1], 'token_budget', ARGV[2], 'tokens_used', ARGV[3],
  'time_budget_ms', ARGV[4], 'time_used_ms', ARGV[5], 'max_depth', ARGV[6],
  'depth', ARGV[7])
return {'ok'}
""",
    # KEYS: session. ARGV: now. Reply: {'ok', depth} or {'depth', depth + 1,
    # max}.
    "increment": r"""
local f, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]), 'depth', 'max_depth')
if err then return {err, who} end
local depth = big(f[4])
if cmp(depth, big(f[5])) >= 0 then return {'depth', str(add(depth, ONE)), f[5]} end
local new = str(add(depth, ONE))
redis.call('HSET', KEYS[1], 'depth', new)
return {'ok', new}
""",
    # Saturates at the start depth (0 for a root). KEYS: session. ARGV: now.
    # Reply: {'ok', depth}.
    "decrement": r"""
local f, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]), 'depth', 'start_depth')
if err then return {err, who} end
local depth = big(f[4])
if cmp(depth, big(f[5] or '0')) <= 0 then return {'ok', f[4]} end
local new = str(dec(depth))
redis.call('HSET', KEYS[1], 'depth', new)
return {'ok', new}
""",
    # The exit of recursion(): -1 whatever the state, never below the start
    # depth, never an error. KEYS: session.
    "leave_recursion": r"""
local f = redis.call('HMGET', KEYS[1], 'depth', 'start_depth')
if f[1] and cmp(big(f[1]), big(f[2] or '0')) > 0 then
  redis.call('HSET', KEYS[1], 'depth', str(dec(big(f[1]))))
end
return {'ok'}
""",
    # Adds the amount to the session and every ancestor, in one step: past
    # 2^64-1 anywhere refuses it whole; past a budget keeps it on the whole
    # path and reports the session nearest the root whose budget was passed.
    # KEYS: session. ARGV: now, used field, budget field, amount.
    # Reply: {'ok', the session's total}, {'tokens' or 'time', total, budget}
    # or {'u64'}.
    "charge": r"""
local down, err, who = path(KEYS[1], anc_keys(2), clock(ARGV[1]), ARGV[2], ARGV[3])
if not down then return {err, who} end
local amount, totals = big(ARGV[4]), {}
for i, node in ipairs(down) do
  totals[i] = add(big(node.f[4]), amount)
  if cmp(totals[i], U64_MAX) > 0 then return {'u64'} end
end
local over, kind = nil, 'time'
if ARGV[2] == 'tokens_used' then kind = 'tokens' end
for i, node in ipairs(down) do
  local text = str(totals[i])
  redis.call('HSET', node.key, ARGV[2], text)
  if not over and cmp(totals[i], big(node.f[5])) > 0 then over = {kind, text, node.f[5]} end
end
if over then return over end
return {'ok', str(totals[#down])}
""",
    # KEYS: session. ARGV: now. Reply: {'ok', the session's six budget
    # fields} or the first exhausted budget on the path, root first.
    "check_budget": r"""
local down, err, who = path(KEYS[1], anc_keys(2), clock(ARGV[1]), 'token_budget', 'tokens_used',
  'time_budget_ms', 'time_used_ms', 'max_depth', 'depth')
if not down then return {err, who} end
local over = exhausted(down)
if over then return over end
local f = down[#down].f
return {'ok', f[4], f[5], f[6], f[7], f[8], f[9]}
""",
    # KEYS: session. ARGV: now, max snapshots (0: no limit), '1' to set
    # as current, snapshot id.
    "snapshot_created": r"""
local f, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]), 'snapshot_count')
if err then return {err, who} end
local count, maximum = big(f[4]), big(ARGV[2])
if not is_zero(maximum) and cmp(count, maximum) >= 0 then return {'maxsnap'} end
redis.call('HSET', KEYS[1], 'snapshot_count', str(add(count, ONE)))
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'snapshot', ARGV[4]) end
return {'ok'}
""",
    # KEYS: session. ARGV: now, snapshot id.
    "snapshot_restored": r"""
local _, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]))
if err then return {err, who} end
redis.call('HSET', KEYS[1], 'snapshot', ARGV[2])
return {'ok'}
""",
    # KEYS: session. ARGV: now.
    "clear_snapshots": r"""
local _, err, who = live(KEYS[1], anc_keys(2), clock(ARGV[1]))
if err then return {err, who} end
redis.call('HDEL', KEYS[1], 'snapshot')
redis.call('HSET', KEYS[1], 'snapshot_count', '0')
return {'ok'}
""",
    # The server's clock, read on the namespace's node (a cluster routes the
    # script by its key). KEYS: expiry (routing only). Reply: TIME.
    "time": r"""
return redis.call('TIME')
""",
    # KEYS: session. Reply: {'ok', HGETALL} or {'notfound'} (counted):
    # get_session, get_all_context_variables, get_current_snapshot.
    "get": r"""
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return {'notfound'} end
return {'ok', fields}
""",
    # A malformed id refused in Python: only the count. KEYS: the two
    # counting keys.
    "refuse": r"""
return {'invalid'}
""",
    # The model-call step's entry (docs/lifecycle.md): the path's validity,
    # every budget on it (as check_budget), then depth + 1 (as increment).
    # KEYS: session. ARGV: now. Reply: {'ok', the six budget fields after}
    # or the refusal.
    "begin_call": r"""
local down, err, who = path(KEYS[1], anc_keys(2), clock(ARGV[1]), 'token_budget', 'tokens_used',
  'time_budget_ms', 'time_used_ms', 'max_depth', 'depth')
if not down then return {err, who} end
local over = exhausted(down)
if over then return over end
local f = down[#down].f
local depth = big(f[9])
local new = str(add(depth, ONE))
if cmp(depth, big(f[8])) >= 0 then return {'depth', new, f[8]} end
redis.call('HSET', KEYS[1], 'depth', new)
return {'ok', f[4], f[5], f[6], f[7], f[8], new}
""",
    # The model-call step's exit: the path's validity, both amounts added
    # to every session on the path (all or nothing against 2^64-1, tokens
    # checked first), depth - 1 (not below the start depth), then the first
    # passed budget nearest the root, tokens before time.
    # KEYS: session. ARGV: now, tokens, elapsed ms. Reply: {'ok', the six
    # budget fields after}, {'tokens' or 'time', total, budget}, {'u64tokens'}
    # or {'u64time'}.
    "end_call": r"""
local down, err, who = path(KEYS[1], anc_keys(2), clock(ARGV[1]), 'token_budget', 'tokens_used',
  'time_budget_ms', 'time_used_ms', 'max_depth', 'depth', 'start_depth')
if not down then return {err, who} end
local tokens, elapsed, t, m = big(ARGV[2]), big(ARGV[3]), {}, {}
for i, node in ipairs(down) do
  t[i] = add(big(node.f[5]), tokens)
  if cmp(t[i], U64_MAX) > 0 then return {'u64tokens'} end
end
for i, node in ipairs(down) do
  m[i] = add(big(node.f[7]), elapsed)
  if cmp(m[i], U64_MAX) > 0 then return {'u64time'} end
end
for i, node in ipairs(down) do
  redis.call('HSET', node.key, 'tokens_used', str(t[i]), 'time_used_ms', str(m[i]))
end
local n = #down
local f = down[n].f
local depth = f[9]
if cmp(big(depth), big(f[10] or '0')) > 0 then
  depth = str(dec(big(depth)))
  redis.call('HSET', KEYS[1], 'depth', depth)
end
for i, node in ipairs(down) do
  if cmp(t[i], big(node.f[4])) > 0 then return {'tokens', str(t[i]), node.f[4]} end
end
for i, node in ipairs(down) do
  if cmp(m[i], big(node.f[6])) > 0 then return {'time', str(m[i]), node.f[6]} end
end
return {'ok', f[4], str(t[n]), f[6], str(m[n]), f[8], depth}
""",
    # KEYS: stats, expiry, vms, refusal counters. Reply: created,
    # destroyed, expired, active, with VM, then the seven refusal counters.
    "stats": r"""
local c = redis.call('HMGET', KEYS[1], 'created', 'destroyed', 'expired')
local out = {c[1] or '0', c[2] or '0', c[3] or '0',
  redis.call('ZCARD', KEYS[2]), redis.call('HLEN', KEYS[3])}
for _, v in ipairs(redis.call('HMGET', KEYS[4], unpack(REFUSAL_FIELDS))) do
  out[#out + 1] = v or '0'
end
return out
""",
    # KEYS: expiry, then the keys of the sessions its ZRANGE named when the
    # caller read it. Reply: {'ok', {sid, HGETALL, ...}}, or {'retry'} when
    # the index changed since.
    "list": r"""
local out = listing(1, 2)
if not out then return {'retry'} end
return {'ok', out}
""",
    # list and stats in one step (dump). KEYS: expiry, stats, vms, then the
    # sessions' keys as for list. Reply: {'ok', stats..., {sid, HGETALL,
    # ...}} or {'retry'}.
    "export": r"""
local out = listing(1, 4)
if not out then return {'retry'} end
local c = redis.call('HMGET', KEYS[2], 'created', 'destroyed', 'expired')
return {'ok', c[1] or '0', c[2] or '0', c[3] or '0',
  redis.call('ZCARD', KEYS[1]), redis.call('HLEN', KEYS[3]), out}
""",
    # Fill an empty namespace, all or nothing (load); the trees were checked
    # by the caller. KEYS: stats, expiry, vms, refusal counters, then per
    # session, in ARGV's order, its key and its children set's key. ARGV:
    # now, (unused), grace ms, created, destroyed, expired, then per session:
    # sid, expires ns, vm ('' for none), parent ('' for a root), n, and n
    # field/value strings.
    "restore": r"""
if redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3]) > 0 then return {'notempty'} end
local named = named_from(5, #KEYS)
local i = 7
while i <= #ARGV do
  if redis.call('EXISTS', named[ARGV[i]].key) == 1 then return {'notempty'} end
  i = i + 5 + tonumber(ARGV[i + 4])
end
local now, grace, floor_ms = clock(ARGV[1]), tonumber(ARGV[3]), server_ms()
local latest = nil
local children = {}
i = 7
while i <= #ARGV do
  local sid, vm, parent, n = ARGV[i], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local key = named[sid].key
  local expires = big(ARGV[i + 1])
  for first = 1, n, 200 do  -- unpack() in chunks: Lua's stack is finite
    local chunk = {}
    for j = first, math.min(first + 199, n) do chunk[#chunk + 1] = ARGV[i + 4 + j] end
    redis.call('HSET', key, unpack(chunk))
  end
  redis.call('ZADD', KEYS[2], int(ms(expires)), sid)
  if vm ~= '' then redis.call('HSET', KEYS[3], vm, sid) end
  -- Long expired already: keep it for the grace (at least 1 s) from now,
  -- so that a cleanup still sees and counts it.
  local at = math.max(deadline(now, expires, grace), floor_ms + grace + 1000)
  redis.call('PEXPIREAT', key, int(at))
  if parent ~= '' then children[#children + 1] = {sid, named[parent], at} end
  if latest == nil or at > latest then latest = at end
  i = i + 5 + n
end
-- The refusal counters are process metrics: a load starts them at 0.
redis.call('DEL', KEYS[4])
-- Children sets once every parent's key has its TTL.
for _, child in ipairs(children) do
  redis.call('SADD', child[2].kids, child[1])
  keep_kids(child[2].key, child[2].kids, child[3])
end
redis.call('HSET', KEYS[1], 'created', ARGV[4], 'destroyed', ARGV[5], 'expired', ARGV[6])
if latest == nil then latest = floor_ms + grace + 1000 end
latest = shared(latest, grace)
keep_until(KEYS[1], latest)
keep_until(KEYS[2], latest)
keep_until(KEYS[3], latest)
return {'ok'}
""",
}

# Scripts that only read: they may run on a replica and when the server is
# out of memory.
READ_ONLY = frozenset({"validate_many", "stats", "list", "export", "time"})

# Scripts that count their refusal (docs/lifecycle.md): each takes two more
# KEYS after its own, the namespace's refusal counters and its expiry index
# (whose deadline the counters follow), and a reply whose status is a
# refusal adds one to its counter in the same atomic step.
COUNTING = frozenset(
    {
        "create_child", "children", "get", "refuse", "update_state", "is_valid",
        "validate", "extend", "destroy", "assign_vm", "release_vm", "set_context",
        "get_context", "delete_context", "update_budget", "increment", "decrement",
        "charge", "check_budget", "snapshot_created", "snapshot_restored",
        "clear_snapshots", "begin_call", "end_call",
    }
)

_COUNT = r"""
local reply = run()
local field = COUNTED[reply[1]]
if field then
  local counters, leader = KEYS[#KEYS - 1], KEYS[#KEYS]
  redis.call('HINCRBY', counters, field, 1)
  -- As long as the namespace's index, and at least a day.
  keep_until(counters, math.max(redis.call('PEXPIRETIME', leader), server_ms() + 86400000))
end
return reply
"""


def _script(name: str, body: str) -> str:
    head = ("#!lua flags=no-writes\n" if name in READ_ONLY else "#!lua\n") + _PRELUDE
    if name in COUNTING:
        return head + "local function run()\n" + body + "end\n" + _COUNT
    return head + body


SCRIPTS: dict[str, str] = {name: _script(name, body) for name, body in _BODIES.items()}
