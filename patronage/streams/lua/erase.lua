#!lua flags=allow-oom
-- (Erasure frees memory, so it runs even when Redis is over maxmemory.)
-- Erase one customer: every key under their hash tag.
-- KEYS: the customer's keys   Returns the number of keys removed and the
-- segment they were in (so the caller can fix the segment sizes).
local stored = redis.call('GET', KEYS[1])
local segment = stored and select(2, cmsgpack.unpack_one(stored))['segment']  -- the map; the trail follows
local removed = 0
for _, key in ipairs(KEYS) do
  removed = removed + redis.call('DEL', key)
end
return {removed, segment or false}
