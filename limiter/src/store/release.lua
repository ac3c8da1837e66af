-- Release: an instance gives one slot back, never below zero.
-- KEYS: holders, leases
-- ARGV: instance
-- Returns the instance's open streams after the release.
local held = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
if held <= 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
