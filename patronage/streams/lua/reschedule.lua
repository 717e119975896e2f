#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Move or drop swept due entries, but only those nobody rescheduled since the
-- sweep read them (an ingest may have lowered the score meanwhile).
-- KEYS[1] due zset   ARGV: triples member, score read, new score ('' = drop)
for i = 1, #ARGV, 3 do
  local member, seen, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('ZSCORE', KEYS[1], member)
  if current and tonumber(current) == tonumber(seen) then
    if new == '' then
      redis.call('ZREM', KEYS[1], member)
    else
      redis.call('ZADD', KEYS[1], new, member)
    end
  end
end
return 0
