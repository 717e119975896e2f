#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Record an at-risk judgement (mirrors patronage/models/risk.py, after_judging):
-- drop the judged orders from risk_orders (an ingest may have appended newer
-- ones since the sweep read them, so it is trimmed here, not overwritten) and
-- move the judged and alerted marks forward, never back. Only on a profile
-- that still exists (an erased one is not brought back).
-- KEYS[1] profile hash   ARGV[1] judged up to (ms, '' = none)   ARGV[2] alerted episode ('' = none)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local decided = tonumber(ARGV[1])
local alerted = tonumber(ARGV[2])
if decided then
  local kept = {}
  for entry in string.gmatch(redis.call('HGET', KEYS[1], 'risk_orders') or '', '[^;]+') do
    local ts = tonumber(string.match(entry, '^[^,]+'))
    if ts > decided then kept[#kept + 1] = entry .. ';' end
  end
  redis.call('HSET', KEYS[1], 'risk_orders', table.concat(kept))
  local current = tonumber(redis.call('HGET', KEYS[1], 'risk_decided') or '')
  if current == nil or decided > current then
    redis.call('HSET', KEYS[1], 'risk_decided', ARGV[1])
  end
end
if alerted then
  local current = tonumber(redis.call('HGET', KEYS[1], 'risk_episode') or '')
  if current == nil or alerted > current then
    redis.call('HSET', KEYS[1], 'risk_episode', ARGV[2])
  end
end
return 1
