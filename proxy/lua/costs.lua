--[[ Learned costs: publish one instance's batch of cost observations to the shared stream.

One stream entry per (tenant, query-shape fingerprint), so the stream's length counts shapes and
its cap can be the size of a learned-cost table: a new instance that reads the whole stream gets
about one table's worth of recent observations.

KEYS[1]   the stream, e.g. sg:costs
ARGV[1]   approximate cap on the stream's length, in entries (XADD MAXLEN ~)
ARGV[2]   milliseconds the stream outlives its last write
ARGV[3]   the publishing instance's id (readers skip their own entries)
ARGV[4..] per (tenant, fingerprint), four values: tenant, fingerprint (16 hex digits),
          count of observations, their mean in cost units

Each entry holds the fields i (instance), t (tenant), f (fingerprint), n (count), c (mean cost).
Returns the id of the last entry added ("" when the batch was empty).
]]
local last = ''
for i = 4, #ARGV, 4 do
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                    'i', ARGV[3], 't', ARGV[i], 'f', ARGV[i + 1], 'n', ARGV[i + 2], 'c', ARGV[i + 3])
end
if last ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return last
