#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Store a scoring decision, only on a profile that still exists: an erasure
-- or expiry landing between the apply and this write must not recreate the
-- hash (it would come back without its TTL, and erased data must stay gone).
-- KEYS[1] profile hash   ARGV: field, value pairs   Returns 1 if written.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
