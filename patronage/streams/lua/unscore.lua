#!lua flags=allow-oom
-- (It only removes fields, so it runs even when Redis is over maxmemory.)
-- Drop scoring fields from a profile (a part merged into a person: the
-- person is scored instead). KEYS[1] profile   ARGV: the fields
-- Returns {the segment the profile had (nil: none, or no profile), 1 if
-- any field was dropped}.
local stored = redis.call('GET', KEYS[1])
if not stored then return {false, 0} end
-- The profile's map, then the trail (written back as it was).
local after, h = cmsgpack.unpack_one(stored)
local trail = after > 0 and string.sub(stored, after + 1) or ''
local segment = h['segment']
local dropped = false
for _, field in ipairs(ARGV) do
  field = tonumber(field) or field  -- a fixed field's code, in text
  if h[field] ~= nil then
    h[field] = nil
    dropped = true
  end
end
if dropped then redis.call('SET', KEYS[1], cmsgpack.pack(h) .. trail, 'KEEPTTL') end
return {segment or false, dropped and 1 or 0}
