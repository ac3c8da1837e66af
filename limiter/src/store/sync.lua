-- Sync of one (policy, key): sets the instance's true open count and renews
-- its lease; 0 drops its entry.
-- KEYS: holders, leases
-- ARGV: instance, open, lease_ms, now_us ('' = TIME)
local instance = ARGV[1]
local open = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
if open == 0 then
  redis.call('HDEL', KEYS[1], instance)
  redis.call('ZREM', KEYS[2], instance)
  return 0
end
local now = now_micros(ARGV[4])
drop_expired(KEYS[1], KEYS[2], now)
redis.call('HSET', KEYS[1], instance, int(open))
redis.call('ZADD', KEYS[2], int(now + lease_ms * 1000), instance)
expire_leases(KEYS[1], KEYS[2], now, lease_ms)
return open
