-- Acquire: one token and one concurrent slot for an instance, or a refusal.
-- KEYS: bucket, holders, leases
-- ARGV: instance, rate_milli, burst, max_concurrent, lease_ms, now_us ('' = TIME),
--       tokens to take (1 for a stream), '1' to take a slot ('0': RLS, which
--       has no release, checks the cap but holds nothing)
-- Returns {verdict, retry_after_ms, reset_ms, remaining, active}; verdict
-- 1 admitted, 2 refused (rate), 3 refused (concurrency).
--
-- The bucket is core/src/limit.rs's StreamLimitState on Redis's clock in
-- microseconds: micro-tokens, a carry below one micro-token (here in
-- nano-tokens), a clock that went back restarts the refill from now,
-- concurrency is checked first and its refusal takes no token.
local instance = ARGV[1]
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local max_concurrent = tonumber(ARGV[4])
local lease_ms = tonumber(ARGV[5])
local now = now_micros(ARGV[6])
local need = tonumber(ARGV[7]) * MICRO
local take_slot = ARGV[8] == '1'
local cap = burst * MICRO

-- Refill (a missing bucket is full).
local tokens, carry, last = cap, 0, now
local state = redis.call('HMGET', KEYS[1], 't', 'c', 'l')
if state[1] then
  tokens = tonumber(state[1]) or cap
  carry = tonumber(state[2]) or 0
  last = tonumber(state[3]) or now
end
if tokens >= cap then
  tokens, carry = cap, 0
elseif now > last then
  -- Nano-tokens still missing (at most 1e15): once the elapsed time covers
  -- them the bucket is full; else elapsed * rate stays below that plus rate.
  local missing = (cap - tokens) * 1000 - carry
  local elapsed = now - last
  if elapsed >= ceil_div(missing, rate) then
    tokens, carry = cap, 0
  else
    local nano = elapsed * rate + carry
    local micro = floor_div(nano, 1000)
    tokens = tokens + micro
    carry = nano - micro * 1000
  end
end

local function micros_until(target)
  local missing = (target - tokens) * 1000 - carry
  if missing <= 0 then return 0 end
  return ceil_div(missing, rate)
end
local function millis(us)
  return math.max(1, ceil_div(us, 1000))
end

drop_expired(KEYS[2], KEYS[3], now)
local active = 0
for _, count in ipairs(redis.call('HVALS', KEYS[2])) do
  active = active + (tonumber(count) or 0)
end

-- The refilled bucket is kept whatever the answer (as the local limiter
-- keeps its refilled state): a clock that later steps back restarts from here.
local function save_bucket()
  redis.call('HSET', KEYS[1], 't', int(tokens), 'c', int(carry), 'l', int(now))
  local to_full_ms = ceil_div(micros_until(cap), 1000)
  redis.call('PEXPIRE', KEYS[1], int(2 * math.max(lease_ms, to_full_ms, 1)))
end

if max_concurrent > 0 and active >= max_concurrent then
  save_bucket()
  return {3, 1000, 1000, floor_div(tokens, MICRO), active}
end
if tokens < need then
  save_bucket()
  return {2, millis(micros_until(need)), millis(micros_until(cap)), floor_div(tokens, MICRO), active}
end

tokens = tokens - need
save_bucket()
if not take_slot then
  return {1, 0, millis(micros_until(cap)), floor_div(tokens, MICRO), active}
end
redis.call('HINCRBY', KEYS[2], instance, 1)
redis.call('ZADD', KEYS[3], int(now + lease_ms * 1000), instance)
expire_leases(KEYS[2], KEYS[3], now, lease_ms)
return {1, 0, 0, floor_div(tokens, MICRO), active + 1}
