#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Store a scoring decision, only on a profile that still exists: an erasure
-- or expiry landing between the apply and this write must not recreate the
-- profile (it would come back without its TTL, and erased data must stay gone).
-- KEYS[1] profile   ARGV: field, value pairs (numbers stored as numbers)
-- Returns 1 if written.
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
-- The profile's map, then the trail (written back as it was).
local after, h = cmsgpack.unpack_one(stored)
local trail = after > 0 and string.sub(stored, after + 1) or ''
-- a fixed field arrives as its code (layout.STORED_NAMES), in text
for i = 1, #ARGV, 2 do h[tonumber(ARGV[i]) or ARGV[i]] = tonumber(ARGV[i + 1]) or ARGV[i + 1] end
redis.call('SET', KEYS[1], cmsgpack.pack(h) .. trail, 'KEEPTTL')
return 1
