#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Move one profile hash to the short stored names (layout 2): each field
-- layout 1 spelled out is written under its name in SHORT (prepended from
-- layout.STORED_NAMES) and the long one deleted. Running it again changes
-- nothing. KEYS[1] profile hash   Returns the number of fields renamed.
local renamed, spelled_out = {}, {}
local raw = redis.call('HGETALL', KEYS[1])
for i = 1, #raw, 2 do
  local short = SHORT[raw[i]]
  if short then
    renamed[#renamed + 1] = short
    renamed[#renamed + 1] = raw[i + 1]
    spelled_out[#spelled_out + 1] = raw[i]
  end
end
if #spelled_out > 0 then
  redis.call('HSET', KEYS[1], unpack(renamed))
  redis.call('HDEL', KEYS[1], unpack(spelled_out))
end
return #spelled_out
