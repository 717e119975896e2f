#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Record a lapse alert for one customer if the episode is still current:
-- the profile's last_seen is the one the sweep judged, and not yet alerted.
-- KEYS[1] profile hash   KEYS[2] lapse outbox
-- ARGV[1] last_seen as read   ARGV[2] finding (JSON)
-- Returns the outbox (pending findings, this one included if recorded).
local last_seen = redis.call('HGET', KEYS[1], 'last_seen')
if last_seen == ARGV[1] and redis.call('HGET', KEYS[1], 'lapse_episode') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'lapse_episode', ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[2])
end
return redis.call('LRANGE', KEYS[2], 0, -1)
