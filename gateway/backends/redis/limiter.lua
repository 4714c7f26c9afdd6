-- vgate rate limiter: sliding-window counters per scope (see gateway/ratelimit/limits.py).
-- One call carries a batch of operations from one gateway, run in order; each is
-- atomic and exact on its own, and the batch costs one round trip.
--
-- Time is cut into buckets of res = window / 60 ms (1 s for the 60 s minute). A
-- request counts in the bucket it was admitted in, and a bucket counts until the
-- window has passed over its end: a request counts for at least the window and at
-- most one bucket longer. Per scope, two keys (two per scope per operation, in order):
--   win    hash  "r<b>" / "t<b>": requests / tokens of bucket b; "r" / "t": their sums
--                over the live buckets; "o": the oldest bucket that may hold anything.
--                Only scopes with an rpm count requests, only those with a tpm tokens;
--                a scope with neither has no hash. At most ~61 buckets: the state is
--                bounded by the window's resolution, not by traffic.
--   slots  zset  request id scored by lease expiry (ms); only with max_concurrent
-- ARGV: window ms, then each operation, seven arguments (mode, scopes, request id, w, x,
-- y, z), an admission then the limits rpm, tpm, max_concurrent of each scope (0 = none):
--   admit:  "a", scopes, id, prompt tokens, wanted output tokens per choice (0: the
--           prompt is the whole cost), choices, lease ms, limits...
--   settle: "s", scopes, id, tokens reserved, actual tokens (-1 keep), admission bucket
--           (-1 unknown), one digit per scope: 1 if it counts tokens, plus 2 if it holds
--           concurrency slots
--   renew:  "r", scopes, id, lease ms, 0, 0, 0 (extends a lease still held)
-- Reply: one string of space-separated integers (one bulk string is far cheaper for
--   the gateway to read than an array of integers). For each admit, in order:
--   admitted (1/0), refusal (0 none, 1 requests, 2 tokens, 3 concurrency),
--   retry-after ms (-1 never), output tokens granted per choice, the admission's bucket,
--   then per scope: requests and tokens in the window, ms until the oldest bucket leaves
--   it. Settles and renewals reply nothing.
-- Time comes from the Redis server, so every gateway replica shares one clock.
--
-- This runs for every request, so it is written for Redis's CPU: a number handed to
-- redis.call, or joined into a string, costs a printf of a double ('%.17g', '%.14g'),
-- several times dearer than an integer format, so the script passes strings it formats
-- with '%d', once where it can (the current bucket's field names, the key TTL); and
-- each redis.call costs more than the fields it touches, so a call reads each scope's
-- counters once (one HMGET) and writes them back once (one HSET), whatever number of
-- its operations change them (see counters below).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local res = math.max(math.floor(window / 60), 1)
local current = math.floor(now / res)
local first_live = math.floor((now - window) / res) -- older buckets have left the window
local span = current - first_live -- live buckets: first_live .. current
local ttl = string.format('%d', window + res + 1000)
local current_digits = string.format('%d', current)
local r_current, t_current = 'r' .. current_digits, 't' .. current_digits
local result = {}
local k, a = 0, 2
-- A scope with neither rpm nor tpm keeps no counters: it reads as empty, and never changes.
local NO_COUNTERS = {requests = 0, tokens = 0, oldest = current}

-- The scope's sums after dropping the buckets that left the window, the oldest bucket
-- still holding something (current when none does), whether they were trimmed, and the
-- current bucket's requests and tokens (nil while it holds nothing: the hash's expiry
-- was last set before this bucket began). Bounded work: the buckets that exist lie
-- within span + 1 of "o", and a trim happens once per bucket at most.
local function load(win)
  local v = redis.call('HMGET', win, 'o', 'r', 't', r_current, t_current)
  local oldest = tonumber(v[1])
  if not oldest then
    redis.call('DEL', win) -- nothing, or strays written after Redis lost the hash
    return 0, 0, current, false, nil, nil
  end
  local requests, tokens = tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local now_requests, now_tokens = tonumber(v[4]), tonumber(v[5])
  if oldest >= first_live then
    return requests, tokens, oldest, false, now_requests, now_tokens
  end
  local last = math.min(current, oldest + span + 1)
  local fields = {}
  for b = oldest, last do
    fields[#fields + 1] = 'r' .. b
    fields[#fields + 1] = 't' .. b
  end
  local got = redis.call('HMGET', win, unpack(fields))
  local gone, next_oldest = {}, current
  for j = 1, #got, 2 do
    local b = oldest + (j - 1) / 2
    if b < first_live then
      if got[j] or got[j + 1] then
        requests = requests - (tonumber(got[j]) or 0)
        tokens = tokens - (tonumber(got[j + 1]) or 0)
        gone[#gone + 1] = fields[j]
        gone[#gone + 1] = fields[j + 1]
      end
    elseif got[j] or got[j + 1] then
      next_oldest = b
      break
    end
  end
  if #gone > 0 then redis.call('HDEL', win, unpack(gone)) end
  return requests, tokens, next_oldest, true, now_requests, now_tokens
end

-- When the bucket that frees enough leaves the window: ms from now (the window if none).
local function wait_for(win, oldest, prefix, excess)
  local fields = {}
  for b = oldest, current do fields[#fields + 1] = prefix .. b end
  local got = redis.call('HMGET', win, unpack(fields))
  local freed = 0
  for j = 1, #got do
    freed = freed + (tonumber(got[j]) or 0)
    if freed >= excess then return (oldest + j) * res + window - now end
  end
  return window
end

-- The counters of every scope this call touched, read once (load) and written back once
-- at the end: a batch of admissions and settlements on one key costs one HMGET and one
-- HSET, however many there are. Each operation still sees every earlier one's effect.
-- Per scope: its sums ("r", "t"), oldest bucket ("o"), the current bucket's counts
-- (nil: absent), whether it must be written, and whether the current bucket was empty
-- when read (its first write sets the hash's expiry: the hash then outlives that
-- bucket's last moment in the window, and a later bucket's first write extends it).
local touched, touched_order = {}, {}
-- Settlements of scopes this call has not read (yet): their token differences, by
-- bucket, added to the counters if an operation reads them later in this call, else
-- applied at the end with HINCRBY (a lone settlement costs no read).
local unread, unread_order = {}, {}

local function counters(win)
  local c = touched[win]
  if c == nil then
    local requests, tokens, oldest, trimmed, now_requests, now_tokens = load(win)
    c = {requests = requests, tokens = tokens, oldest = oldest, now_requests = now_requests,
      now_tokens = now_tokens, dirty = trimmed, fresh = now_requests == nil and now_tokens == nil}
    touched[win] = c
    touched_order[#touched_order + 1] = win
    local u = unread[win]
    if u ~= nil then -- settled earlier in this call: those differences first
      unread[win] = nil
      for _, bucket in ipairs(u.order) do
        local delta = u.buckets[bucket]
        if bucket == current_digits then
          c.now_tokens = (c.now_tokens or 0) + delta
        else
          redis.call('HINCRBY', win, 't' .. bucket, string.format('%d', delta))
        end
      end
      c.tokens = c.tokens + u.tokens
      c.dirty = true
    end
  end
  return c
end

local function settle_unread(win, bucket, delta)
  local u = unread[win]
  if u == nil then
    u = {tokens = 0, buckets = {}, order = {}}
    unread[win] = u
    unread_order[#unread_order + 1] = win
  end
  if u.buckets[bucket] == nil then
    u.buckets[bucket] = 0
    u.order[#u.order + 1] = bucket
  end
  u.buckets[bucket] = u.buckets[bucket] + delta
  u.tokens = u.tokens + delta
end

local function write_back(win, c)
  if not c.dirty then return end
  local fields = {'o', string.format('%d', c.oldest), 'r', string.format('%d', c.requests),
    't', string.format('%d', c.tokens)}
  if c.now_requests then
    fields[#fields + 1] = r_current
    fields[#fields + 1] = string.format('%d', c.now_requests)
  end
  if c.now_tokens then
    fields[#fields + 1] = t_current
    fields[#fields + 1] = string.format('%d', c.now_tokens)
  end
  redis.call('HSET', win, unpack(fields))
  if c.fresh and (c.now_requests or c.now_tokens) then
    redis.call('PEXPIRE', win, ttl)
    c.fresh = false
  end
  c.dirty = false
end

-- ``at_digits``: the admission's bucket as the gateway sent it (the same digits).
local function settle(scopes, rid, reserved, actual, at, at_digits, flags)
  local delta = actual - reserved
  for i = 0, scopes - 1 do
    local win = KEYS[k + 2 * i + 1]
    local scope_flags = string.byte(flags, i + 1) - 48
    if actual >= 0 and delta ~= 0 and scope_flags % 2 == 1 then
      if at >= first_live then -- its bucket still counts: the difference goes there
        local c = touched[win]
        if c == nil then
          settle_unread(win, at_digits, delta)
        else
          if at == current then
            c.now_tokens = (c.now_tokens or 0) + delta
          else -- an older bucket, not among the counters kept here
            redis.call('HINCRBY', win, 't' .. at_digits, string.format('%d', delta))
          end
          c.tokens = c.tokens + delta
          c.dirty = true
        end
      elseif delta > 0 then -- its bucket left the window: a charge counts from now on
        local c = counters(win)
        c.tokens = c.tokens + delta
        c.now_tokens = (c.now_tokens or 0) + delta
        c.dirty = true
      end -- a refund whose reservation has left the window already has nothing to undo
    end
    if scope_flags >= 2 then redis.call('ZREM', KEYS[k + 2 * i + 2], rid) end
  end
end

local function renew(scopes, rid, lease)
  for i = 0, scopes - 1 do
    local slots = KEYS[k + 2 * i + 2]
    if redis.call('ZADD', slots, 'XX', 'CH', now + lease, rid) > 0 then
      redis.call('PEXPIRE', slots, lease + 1000)
    end
  end
end

local function admit(scopes, rid, prompt, wanted, choices, lease, limits)
  local states = {}
  local refused, retry, granted = 0, 0, wanted
  local need = prompt + (wanted > 0 and choices or 0) -- the least it can be admitted with
  for i = 0, scopes - 1 do
    local win, slots = KEYS[k + 2 * i + 1], KEYS[k + 2 * i + 2]
    local rpm, tpm, maxc = limits[3 * i + 1], limits[3 * i + 2], limits[3 * i + 3]
    local c = NO_COUNTERS
    if rpm > 0 or tpm > 0 then c = counters(win) end
    states[i] = c
    if refused == 0 then
      if rpm > 0 and c.requests + 1 > rpm then
        refused = 1
        write_back(win, c) -- the buckets are read as they stand
        retry = wait_for(win, c.oldest, 'r', c.requests + 1 - rpm)
      elseif tpm > 0 and c.tokens + need > tpm then
        refused = 2
        write_back(win, c)
        retry = need > tpm and -1 or wait_for(win, c.oldest, 't', c.tokens + need - tpm)
      elseif maxc > 0 and redis.call('ZCARD', slots) + 1 > maxc then
        -- Only now drop the leases of gateways that died holding them: one call
        -- less on every admission that is not at its concurrency limit.
        redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
        if redis.call('ZCARD', slots) + 1 > maxc then
          refused = 3
          retry = 1000
        end
      end
      if refused == 0 and tpm > 0 and wanted > 0 then -- what is left after the prompt
        granted = math.min(granted, math.floor((tpm - c.tokens - prompt) / choices))
      end
    end
  end
  local cost = prompt + choices * granted
  if refused == 0 then
    result[#result + 1] = string.format('1 0 0 %d %s', granted, current_digits)
  else
    result[#result + 1] = string.format('0 %d %d 0 -1', refused, math.max(retry, -1))
  end
  for i = 0, scopes - 1 do
    local rpm, tpm = limits[3 * i + 1], limits[3 * i + 2]
    local c = states[i]
    if refused == 0 and (rpm > 0 or tpm > 0) then
      c.requests = rpm > 0 and c.requests + 1 or 0
      c.tokens = tpm > 0 and c.tokens + cost or 0
      if rpm > 0 then c.now_requests = (c.now_requests or 0) + 1 end
      if tpm > 0 then c.now_tokens = (c.now_tokens or 0) + cost end
      c.dirty = true
    end
    if refused == 0 and limits[3 * i + 3] > 0 then
      local slots = KEYS[k + 2 * i + 2]
      redis.call('ZADD', slots, string.format('%d', now + lease), rid)
      redis.call('PEXPIRE', slots, string.format('%d', lease + 1000))
    end
    local reset = 0
    if c.requests > 0 or c.tokens > 0 then
      reset = math.max((c.oldest + 1) * res + window - now, 0)
    end
    result[#result + 1] = string.format('%d %d %d', c.requests, c.tokens, reset)
  end
end

while a < #ARGV do
  local mode, scopes, rid = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
  local y_digits, z = ARGV[a + 5], ARGV[a + 6]
  local w, x, y = tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]), tonumber(y_digits)
  a = a + 7
  if mode == 'a' then
    local limits = {}
    for j = 1, 3 * scopes do limits[j] = tonumber(ARGV[a + j - 1]) end
    a = a + 3 * scopes
    admit(scopes, rid, w, x, y, tonumber(z), limits)
  elseif mode == 's' then
    settle(scopes, rid, w, x, y, y_digits, z)
  else
    renew(scopes, rid, w)
  end
  k = k + 2 * scopes
end
for _, win in ipairs(touched_order) do write_back(win, touched[win]) end
for _, win in ipairs(unread_order) do
  local u = unread[win]
  if u ~= nil then -- never read by this call
    for _, bucket in ipairs(u.order) do
      if u.buckets[bucket] ~= 0 then
        redis.call('HINCRBY', win, 't' .. bucket, string.format('%d', u.buckets[bucket]))
      end
    end
    if u.tokens ~= 0 then redis.call('HINCRBY', win, 't', string.format('%d', u.tokens)) end
  end
end
return table.concat(result, ' ')
