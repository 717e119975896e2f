#!lua
-- Record a batch on a partition's event-clock marks (models/clock.py): per
-- activity topic the newest event time (never lowered) and the wall time it
-- was last heard from; `since`, when the partition first delivered anything.
-- KEYS[1] clock hash   ARGV[1] wall ms   ARGV[2..] pairs: topic, newest event ms
redis.call('HSETNX', KEYS[1], 'since', ARGV[1])
for i = 2, #ARGV, 2 do
  local field = 'hw:' .. ARGV[i]
  local current = tonumber(redis.call('HGET', KEYS[1], field) or '-1')
  if tonumber(ARGV[i + 1]) > current then redis.call('HSET', KEYS[1], field, ARGV[i + 1]) end
  redis.call('HSET', KEYS[1], 'seen:' .. ARGV[i], ARGV[1])
end
return 0
