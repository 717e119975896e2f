#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Record an at-risk judgement (mirrors patronage/models/risk.py, after_judging):
-- move the decided and alerted marks forward, never back, and drop the
-- orders up to the decided mark from the unjudged orders (an ingest may have
-- appended newer ones since the sweep read them, so they are trimmed here,
-- not overwritten; the key goes when none is left). Only on a profile that
-- still exists (an erased one is not brought back).
-- KEYS[1] profile   KEYS[2] risk_orders
-- ARGV[1] decided (ms, '' = none)   ARGV[2] alerted episode ('' = none)
local stored = redis.call('GET', KEYS[1])
if not stored then return 0 end
-- The profile's map, then the trail (written back as it was).
local after, h = cmsgpack.unpack_one(stored)
local trail = after > 0 and string.sub(stored, after + 1) or ''
local dirty = false
local decided = tonumber(ARGV[1])
local alerted = tonumber(ARGV[2])
if decided then
  local current = h['risk_decided']
  if current == nil or decided > current then
    h['risk_decided'] = decided
    dirty = true
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
  local current = h['risk_episode']
  if current == nil or alerted > current then
    h['risk_episode'] = alerted
    dirty = true
  end
end
if dirty then redis.call('SET', KEYS[1], cmsgpack.pack(h) .. trail, 'KEEPTTL') end
return 1
