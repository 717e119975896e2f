#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Raise a partition's event-time watermark (never lower it).
-- KEYS[1] watermark string   ARGV[1] candidate epoch ms
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local candidate = tonumber(ARGV[1])
if candidate > current then
  redis.call('SET', KEYS[1], ARGV[1])
  return candidate
end
return current
