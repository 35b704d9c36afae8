--[[ One shared token bucket: book a settlement, charge or reserve for waiting requests, lease the rest.

Everything happens in one call so that the bucket is refilled, charged and leased atomically, on
Redis time (instance clocks never matter).

KEYS[1]   the bucket, e.g. sg:{acme}:search: a hash {l = level in cost units, t = Redis time of
          that level in seconds}. A missing key is a full bucket.
ARGV[1]   rate      cost units per second (> 0)
ARGV[2]   burst     cost units (> 0)
ARGV[3]   max_debt  cost units (>= 0): the level never goes below -max_debt
ARGV[4]   settle    net cost units booked first: > 0 debits (bills that came out higher than
                    charged), < 0 credits (refunds, leases given back); a credit stops at the burst
ARGV[5]   lease     cost units the caller wants for its lease; granted only from tokens present
                    now, after every request below was served
ARGV[6]   max_wait  seconds a request below may wait for its tokens
ARGV[7..] the cost units of each request that the caller's lease could not pay, in arrival order

Returns strings (a Lua number in a reply is truncated to an integer):
  {granted, level, wait_1, wait_2, ...}
  granted  cost units leased to the caller (taken from the bucket)
  level    the bucket's level after this call (negative while requests wait for their tokens)
  wait_i   0: charged now; > 0: charged, its tokens exist in wait_i seconds (the caller sleeps);
           < 0: refused, nothing charged, the tokens would exist in -wait_i seconds (retry-after)
The key expires when the bucket would be full again, which is exactly what a missing key means.
]]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local floor = -tonumber(ARGV[3])
local settle = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local max_wait = tonumber(ARGV[6])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local state = redis.call('HMGET', KEYS[1], 'l', 't')
local level = tonumber(state[1])
local last = tonumber(state[2])
if level == nil or last == nil then
  level = burst
elseif now > last then
  level = level + (now - last) * rate
end
-- a smaller burst after a reload clamps the level; a settlement never goes past the floor
level = math.max(floor, math.min(burst, level) - settle)
if level > burst then
  level = burst
end

local out = {'', ''}
for i = 7, #ARGV do
  local cost = tonumber(ARGV[i])
  if level >= cost then
    level = level - cost
    out[#out + 1] = '0'
  else
    local wait = (cost - level) / rate
    if wait <= max_wait and level - cost >= floor then
      level = level - cost
      out[#out + 1] = string.format('%.17g', wait)
    else
      out[#out + 1] = string.format('%.17g', -wait)
    end
  end
end

local granted = 0
if want > 0 and level > 0 then
  granted = math.min(want, level)
  level = level - granted
end
out[1] = string.format('%.17g', granted)
out[2] = string.format('%.17g', level)

redis.call('HSET', KEYS[1], 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
-- left alone, the bucket is full after (burst - level) / rate seconds: from then on no key says the same
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) / rate * 1000) + 1000)
return out
