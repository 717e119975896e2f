#!lua
-- The code of each topic named in ARGV, given on first sight (the next
-- number) and never changed: stored offset fields hold it instead of the
-- topic's name (layout.TopicCodes).
-- KEYS[1] topics hash (topic -> code, '#next' -> the next code)
-- Returns the codes, in ARGV order.
local codes = {}
for i = 1, #ARGV do
  local code = redis.call('HGET', KEYS[1], ARGV[i])
  if not code then
    code = tostring(redis.call('HINCRBY', KEYS[1], '#next', 1) - 1)
    redis.call('HSET', KEYS[1], ARGV[i], code)
  end
  codes[i] = code
end
return codes
