#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Record an at-risk judgement (mirrors patronage/models/risk.py, after_judging):
-- move the decided and alerted marks forward, never back, and drop the
-- orders up to the decided mark from the unjudged orders (an ingest may have
-- appended newer ones since the sweep read them, so they are trimmed here,
-- not overwritten; the key goes when none is left). Only on a profile that
-- still exists (an erased one is not brought back).
-- KEYS[1] profile hash   KEYS[2] risk_orders
-- ARGV[1] decided (ms, '' = none)   ARGV[2] alerted episode ('' = none)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local decided = tonumber(ARGV[1])
local alerted = tonumber(ARGV[2])
if decided then
  local current = tonumber(redis.call('HGET', KEYS[1], 'risk_decided') or '')
  if current == nil or decided > current then
    redis.call('HSET', KEYS[1], 'risk_decided', ARGV[1])
  else
    decided = current
  end
  local kept = {}
  for entry in string.gmatch(redis.call('GET', KEYS[2]) or '', '[^;]+') do
    if tonumber(string.match(entry, '^[^,]+')) > decided then kept[#kept + 1] = entry .. ';' end
  end
  if #kept == 0 then
    redis.call('DEL', KEYS[2])
  else
    redis.call('SET', KEYS[2], table.concat(kept), 'KEEPTTL')
  end
end
if alerted then
  local current = tonumber(redis.call('HGET', KEYS[1], 'risk_episode') or '')
  if current == nil or alerted > current then
    redis.call('HSET', KEYS[1], 'risk_episode', ARGV[2])
  end
end
return 1
