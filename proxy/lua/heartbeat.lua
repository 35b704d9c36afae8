--[[ Membership: an instance says it is alive (or leaving) and learns how many instances are.

KEYS[1]  a sorted set of instance ids scored by the Redis time of their last heartbeat,
         e.g. sg:instances
ARGV[1]  this instance's id
ARGV[2]  ttl seconds: an instance silent this long no longer counts as live
ARGV[3]  "1" to leave (shutdown), "0" to stay

Returns the number of live instances (an integer), this one included unless it left.
]]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local ttl = tonumber(ARGV[2])

if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], string.format('%.17g', now), ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now - ttl))
-- the set outlives its last member by one ttl, then goes away with it
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 2000))
return redis.call('ZCARD', KEYS[1])
