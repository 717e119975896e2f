#!lua
-- Record what was seen of each source (topic partition): its epoch and the
-- highest offset of that epoch. Only ever raises, so two workers briefly
-- sharing a partition during a rebalance cannot move it back.
-- KEYS[1] sources hash (field "topic:partition" -> "epoch:max_offset")
-- ARGV: triples field, epoch, max offset
for i = 1, #ARGV, 3 do
  local epoch, offset = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local newer = true
  if current then
    local e, o = string.match(current, '^(%d+):(%-?%d+)$')
    e, o = tonumber(e), tonumber(o)
    newer = epoch > e or (epoch == e and offset > o)
  end
  if newer then redis.call('HSET', KEYS[1], ARGV[i], string.format('%d:%d', epoch, offset)) end
end
return 0
