#!lua
-- Mark customers a batch had with nothing to judge (attribute changes only)
-- as parked since this batch, without postponing a pending judgment: ZADD LT
-- would keep an older parked score (retention would trim a live customer),
-- ZADD GT would move a pending one past the sweep.
-- KEYS[1] due zset   ARGV[1] layout.PARKED   ARGV[2..]: pairs member, score
local parked = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local current = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not current or tonumber(current) >= parked then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
return 0
