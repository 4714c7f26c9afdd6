-- vgate rate limiter: a sliding-window log per scope (see gateway/ratelimit.py).
-- One call carries a batch of operations from one gateway, run in order; each is
-- atomic and exact on its own, and the batch costs one round trip.
--
-- Per scope, three keys (consumed from KEYS in order, three per scope per operation):
--   log    zset  "<request id>:<tokens>" scored by admission time (ms)
--   tokens str   the sum of the log's tokens
--   slots  zset  request id scored by lease expiry (ms)
-- ARGV: window ms, then each operation:
--   admit:  "a", scopes, request id, tokens to reserve, lease ms, then rpm, tpm,
--           max_concurrent per scope (0 = unlimited)
--   settle: "s", scopes, request id, tokens reserved, actual tokens (-1 = keep)
--   renew:  "r", scopes, request id, 0, lease ms (extends a lease still held)
-- Reply: one string of space-separated integers (one bulk string is far cheaper for
--   the gateway to read than an array of integers). For each admit, in order:
--   admitted (1/0), refusal (0 none, 1 requests, 2 tokens, 3 concurrency),
--   retry-after ms (-1 never), then per scope: requests and tokens in the window,
--   ms until the oldest entry leaves it. Settles and renewals reply nothing.
-- Time comes from the Redis server, so every gateway replica shares one clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local cutoff = now - window
local result = {}
local k, a = 0, 2

local function push(value)
  result[#result + 1] = string.format('%d', value)
end

local function tokens_of(member)
  return tonumber(string.match(member, ':(%-?%d+)$')) or 0
end

local function settle(scopes, rid, cost, actual)
  for i = 0, scopes - 1 do
    local log, tok, slots = KEYS[k + 3 * i + 1], KEYS[k + 3 * i + 2], KEYS[k + 3 * i + 3]
    if actual >= 0 and actual ~= cost then
      local member = rid .. ':' .. cost
      local score = redis.call('ZSCORE', log, member)
      if score then
        redis.call('ZREM', log, member)
        redis.call('ZADD', log, score, rid .. ':' .. actual)
        redis.call('INCRBY', tok, actual - cost)
      end
    end
    redis.call('ZREM', slots, rid)
  end
end

local function renew(scopes, rid, lease)
  for i = 0, scopes - 1 do
    local slots = KEYS[k + 3 * i + 3]
    if redis.call('ZADD', slots, 'XX', 'CH', now + lease, rid) > 0 then
      redis.call('PEXPIRE', slots, lease + 1000)
    end
  end
end

local function admit(scopes, rid, cost, lease, limits)
  local counts, used, trimmed, refused, retry = {}, {}, {}, 0, 0
  for i = 0, scopes - 1 do
    local log, tok, slots = KEYS[k + 3 * i + 1], KEYS[k + 3 * i + 2], KEYS[k + 3 * i + 3]
    local rpm, tpm, maxc = limits[3 * i + 1], limits[3 * i + 2], limits[3 * i + 3]
    local freed = 0
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
    if #old > 0 then
      for _, member in ipairs(old) do freed = freed + tokens_of(member) end
      redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
    end
    local count = redis.call('ZCARD', log)
    local spent = tonumber(redis.call('GET', tok) or '0') - freed
    counts[i], used[i], trimmed[i] = count, spent, freed ~= 0
    if refused == 0 then
      if rpm > 0 and count + 1 > rpm then
        refused = 1
        local entry = redis.call('ZRANGE', log, count - rpm, count - rpm, 'WITHSCORES')
        retry = tonumber(entry[2]) + window - now
      elseif tpm > 0 and spent + cost > tpm then
        refused = 2
        if cost > tpm then
          retry = -1
        else
          retry = window
          local gone = 0
          local entries = redis.call('ZRANGE', log, 0, 999, 'WITHSCORES')
          for j = 1, #entries, 2 do
            gone = gone + tokens_of(entries[j])
            if spent - gone + cost <= tpm then
              retry = tonumber(entries[j + 1]) + window - now
              break
            end
          end
        end
      elseif maxc > 0 and redis.call('ZCARD', slots) + 1 > maxc then
        -- Only now drop the leases of gateways that died holding them: one call
        -- less on every admission that is not at its concurrency limit.
        redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
        if redis.call('ZCARD', slots) + 1 > maxc then
          refused = 3
          retry = 1000
        end
      end
    end
  end
  push(refused == 0 and 1 or 0)
  push(refused)
  push(math.max(retry, -1))
  for i = 0, scopes - 1 do
    local log, tok, slots = KEYS[k + 3 * i + 1], KEYS[k + 3 * i + 2], KEYS[k + 3 * i + 3]
    if refused == 0 then
      redis.call('ZADD', log, now, rid .. ':' .. cost)
      redis.call('PEXPIRE', log, window + 1000)
      -- The new sum and its expiry in one call (the trimmed tokens are taken off here).
      redis.call('SET', tok, string.format('%d', used[i] + cost), 'PX', window + 1000)
      if limits[3 * i + 3] > 0 then
        redis.call('ZADD', slots, now + lease, rid)
        redis.call('PEXPIRE', slots, lease + 1000)
      end
      counts[i], used[i] = counts[i] + 1, used[i] + cost
    elseif trimmed[i] then
      redis.call('SET', tok, string.format('%d', used[i]), 'KEEPTTL')
    end
    local reset = 0
    if counts[i] > 0 then
      local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
      if oldest[2] then reset = math.max(tonumber(oldest[2]) + window - now, 0) end
    end
    push(counts[i])
    push(used[i])
    push(reset)
  end
end

while a < #ARGV do
  local mode, scopes, rid, cost = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local extra = tonumber(ARGV[a + 4])
  a = a + 5
  if mode == 'a' then
    local limits = {}
    for j = 1, 3 * scopes do limits[j] = tonumber(ARGV[a + j - 1]) end
    a = a + 3 * scopes
    admit(scopes, rid, cost, extra, limits)
  elseif mode == 's' then
    settle(scopes, rid, cost, extra)
  else
    renew(scopes, rid, extra)
  end
  k = k + 3 * scopes
end
return table.concat(result, ' ')
