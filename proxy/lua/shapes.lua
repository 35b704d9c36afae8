--[[ The costliest query shapes: one instance's view of one tenant, published for the others.

Each instance keeps its own window of shapes (proxy/shapes.py) and, every few seconds, publishes
the tenant's top shapes slot by slot as one JSON value; a reader adds up every instance's value.
A value is replaced, never added to, so a publish that is lost or repeated never counts twice.

KEYS[1]   the tenant's hash, e.g. sg:{acme}:shapes (the {tenant} tag: one Redis Cluster slot)
          field <instance id>    the JSON of that instance's slots
          field <instance id>@   the Redis time (seconds) of its last publish
ARGV[1]   the publishing instance's id
ARGV[2]   its JSON
ARGV[3]   the window in seconds: values published longer ago than that are removed, and the key
          expires that long after its last write

Returns the number of instances whose values the hash holds after this publish.
]]
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], ARGV[1] .. '@', now)
local live = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, -1) == '@' then
    local published = tonumber(redis.call('HGET', KEYS[1], field))
    if published == nil or published < now - window then
      redis.call('HDEL', KEYS[1], field, string.sub(field, 1, -2))
    else
      live = live + 1
    end
  end
end
redis.call('EXPIRE', KEYS[1], math.ceil(window))
return live
