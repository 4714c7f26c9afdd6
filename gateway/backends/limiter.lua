-- vgate rate limiter: one sliding-window log per scope (see gateway/ratelimit.py).
-- KEYS: three per scope: log (zset: "<request id>:<tokens>" scored by admission time in ms),
--       tokens (the sum of the log's tokens), slots (zset: request id scored by lease expiry).
-- ARGV: mode ("admit" | "settle"), request id, tokens (admit: to reserve; settle: reserved),
--       admit: window ms, lease ms, then rpm, tpm, max_concurrent per scope (0 = unlimited);
--       settle: the actual tokens, or -1 to keep the reservation.
-- Time comes from the Redis server, so every gateway replica shares one clock.
local mode, rid, cost = ARGV[1], ARGV[2], tonumber(ARGV[3])
local scopes = #KEYS / 3
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function tokens_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 0
end

if mode == 'settle' then
  local actual = tonumber(ARGV[4])
  for i = 0, scopes - 1 do
    local log, tok, slots = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
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
  return 1
end

local window, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
local cutoff = now - window
local counts, used, refused, retry = {}, {}, 0, 0
for i = 0, scopes - 1 do
  local log, tok, slots = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local rpm, tpm, maxc = tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i]), tonumber(ARGV[8 + 3 * i])
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff)
  if #old > 0 then
    local freed = 0
    for _, member in ipairs(old) do freed = freed + tokens_of(member) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', cutoff)
    if freed ~= 0 then redis.call('DECRBY', tok, freed) end
  end
  local count = redis.call('ZCARD', log)
  local spent = tonumber(redis.call('GET', tok) or '0')
  counts[i], used[i] = count, spent
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
        local freed = 0
        local entries = redis.call('ZRANGE', log, 0, 999, 'WITHSCORES')
        for j = 1, #entries, 2 do
          freed = freed + tokens_of(entries[j])
          if spent - freed + cost <= tpm then
            retry = tonumber(entries[j + 1]) + window - now
            break
          end
        end
      end
    elseif maxc > 0 then
      redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
      if redis.call('ZCARD', slots) + 1 > maxc then
        refused = 3
        retry = 1000
      end
    end
  end
end

local result = {refused == 0 and 1 or 0, refused, math.max(retry, -1)}
for i = 0, scopes - 1 do
  local log, tok, slots = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  if refused == 0 then
    redis.call('ZADD', log, now, rid .. ':' .. cost)
    redis.call('INCRBY', tok, cost)
    redis.call('PEXPIRE', log, window + 1000)
    redis.call('PEXPIRE', tok, window + 1000)
    if tonumber(ARGV[8 + 3 * i]) > 0 then
      redis.call('ZADD', slots, now + lease, rid)
      redis.call('PEXPIRE', slots, lease + 1000)
    end
    counts[i], used[i] = counts[i] + 1, used[i] + cost
  end
  local reset = 0
  if counts[i] > 0 then
    local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
    if oldest[2] then reset = math.max(tonumber(oldest[2]) + window - now, 0) end
  end
  table.insert(result, counts[i])
  table.insert(result, used[i])
  table.insert(result, reset)
end
return result
