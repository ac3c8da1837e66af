-- Shared by the limiter's scripts. Lua numbers in Redis are doubles: every
-- integer here stays below 2^53 (time in microseconds, about 1.8e15; tokens
-- in micro-tokens, at most 1e12; refill sums in nano-tokens, at most about
-- 1e15), and numbers go back to Redis formatted with %d (Redis would print
-- large ones in exponent form).
local MICRO = 1000000

local function int(x)
  return string.format('%d', x)
end

-- Exact floor(a / b) for integers 0 <= a, 0 < b below 2^53 (a double
-- division can round across an integer; step back or forward once).
local function floor_div(a, b)
  local q = math.floor(a / b)
  while q * b > a do q = q - 1 end
  while (q + 1) * b <= a do q = q + 1 end
  return q
end

local function ceil_div(a, b)
  local q = floor_div(a, b)
  if q * b < a then q = q + 1 end
  return q
end

-- Redis's clock in microseconds, or the caller's (tests: ARGV names it).
local function now_micros(given)
  if given ~= nil and given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * MICRO + tonumber(t[2])
end

-- Drops the instances whose lease ran out (KEYS[2] holders, KEYS[3] leases).
local function drop_expired(holders, leases, now)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', int(now))
  for _, instance in ipairs(expired) do
    redis.call('HDEL', holders, instance)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', leases, '-inf', int(now))
  end
end

-- Keeps holders and leases as long as the latest lease, plus one lease.
local function expire_leases(holders, leases, now, lease_ms)
  local last = redis.call('ZRANGE', leases, -1, -1, 'WITHSCORES')
  if last[2] then
    local ttl = ceil_div(math.max(tonumber(last[2]) - now, 0), 1000) + lease_ms
    redis.call('PEXPIRE', holders, int(ttl))
    redis.call('PEXPIRE', leases, int(ttl))
  end
end
