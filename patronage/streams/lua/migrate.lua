#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Move one customer to this layout, atomically; running it again changes
-- nothing. Layout 1 -> 2: each field spelled out goes under its two-letter
-- name (now straight to its code: CODE, prepended from layout.py). Layout
-- 2 -> 3: the five keys of the trail's parts become the trail (in layout
-- 5's format: four 4-byte lengths, then the parts). Layout 3 ->
-- 4: the profile hash becomes one cmsgpack map (numbers as numbers;
-- attributes, and any text that is not a number, as text). Layout 4 -> 5:
-- the trail moves from a key of its own to after the profile's map. Layout
-- 5 -> 6: each fixed field's two-letter name becomes its one-byte code, and
-- the trail's records are shortened (layout.TRAIL_FORMAT). Layout 6 -> 7:
-- each prefixed field's prefix becomes its byte, an offset field's topic its
-- code, attribute times base 36.
-- Each keeps the profile's expiry.
-- KEYS[1] profile   KEYS[2] layouts 3-4's trail   KEYS[3..7] layout 2's
-- days, sessions, event ids, natural keys, unjudged days
-- ARGV: topic, code pairs (layout.TopicCodes)
-- Returns {fields renamed (to their codes and prefix bytes), profiles packed, trails merged,
-- trails folded, trails compacted, topics without a code}.
local ttl = redis.call('PTTL', KEYS[1])
local function set_keeping_ttl(key, value)
  if ttl > 0 then
    redis.call('SET', key, value, 'PX', ttl)
  else
    redis.call('SET', key, value)
  end
end

local renamed, packed = 0, 0
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local h = {}
  local raw = redis.call('HGETALL', KEYS[1])
  for i = 1, #raw, 2 do
    local name, value = raw[i], raw[i + 1]
    if CODE[name] then
      name = CODE[name]
      renamed = renamed + 1
    end
    if type(name) == 'number' or string.sub(name, 1, 2) ~= 'a:' then
      value = tonumber(value) or value
    end
    h[name] = value
  end
  redis.call('DEL', KEYS[1])
  set_keeping_ttl(KEYS[1], cmsgpack.pack(h))
  packed = 1
end

local merged = 0
if redis.call('EXISTS', KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]) > 0 then
  local bitmap = redis.call('GET', KEYS[3]) or ''
  local sessions = {}
  local z = redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')
  for i = 1, #z, 2 do sessions[#sessions + 1] = z[i] .. struct.pack('>d', tonumber(z[i + 1])) end
  local eids = redis.call('GET', KEYS[5]) or ''
  local orders = redis.call('GET', KEYS[6]) or ''
  local v, days, edges = redis.call('HGETALL', KEYS[7]), {}, {}
  for i = 1, #v, 2 do
    local day = tonumber(v[i])
    days[#days + 1] = day
    edges[day] = v[i + 1]
  end
  table.sort(days)
  local parts = {}
  for i, day in ipairs(days) do
    local lo, hi = string.match(edges[day], '^(%-?[%d.e+]+):(%-?[%d.e+]+)$')
    parts[i] = struct.pack('>i4dd', day, tonumber(lo), tonumber(hi))
  end
  local sess, edge_raw = table.concat(sessions), table.concat(parts)
  local trail = struct.pack('>I4I4I4I4', #bitmap, #sess, #eids, #edge_raw)
    .. bitmap .. sess .. eids .. edge_raw .. orders
  set_keeping_ttl(KEYS[2], trail)
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  merged = 1
end

local folded = 0
local trail = redis.call('GET', KEYS[2])
if trail then
  -- A profile of layout 4 or earlier is its map alone: the trail goes after it.
  local map = redis.call('GET', KEYS[1]) or cmsgpack.pack({})
  set_keeping_ttl(KEYS[1], map .. trail)
  redis.call('DEL', KEYS[2])
  folded = 1
end
-- Layouts 2-5 packed the fields under their two-letter names: each goes
-- under its code.
local value = redis.call('GET', KEYS[1])
if not value then return {renamed, packed, merged, folded, 0, {}} end
local after, h = cmsgpack.unpack_one(value)
local map, trail = value, ''
if after > 0 then map, trail = string.sub(value, 1, after), string.sub(value, after + 1) end
local recoded = 0
for name, code in pairs(CODE) do
  if #name == 2 and h[name] ~= nil then  -- CODE also holds layout 1's long names
    h[code] = h[name]
    h[name] = nil
    recoded = recoded + 1
  end
end
-- Layouts 1-6 wrote a prefixed field's prefix out ('cat:home', '#cat:'):
-- each goes behind its byte (STORED_PREFIX, prepended from layout.py), and
-- an attribute's time from decimal to base 36 (layout.stored_attribute).
--!include base36
-- An offset field's topic goes under its code (ARGV: topic, code pairs); a
-- topic without one is left as it is and returned, to be given a code and
-- moved by running this again.
local topic_code, unknown = {}, {}
for i = 1, #ARGV, 2 do topic_code[ARGV[i]] = ARGV[i + 1] end
local moves = {}
for name, field_value in pairs(h) do
  if type(name) == 'string' then
    local mark, bare = '', name
    if string.sub(name, 1, 1) == '#' then mark, bare = '#', string.sub(name, 2) end
    local head = string.match(bare, '^[a-z]+:')
    local byte = head and STORED_PREFIX[head]
    local rest = byte and string.sub(bare, #head + 1)
    if head == 'o:' and byte then
      local topic, tail = string.match(rest, '^([^:]*)(.*)$')
      if topic_code[topic] then
        rest = topic_code[topic] .. tail
      else
        unknown[#unknown + 1] = topic
        byte = nil
      end
    elseif head == 'a:' and byte and type(field_value) == 'string' then
      local ts, after_ts = string.match(field_value, '^(%-?%d+)(|.*)$')
      if ts then field_value = base36(tonumber(ts)) .. after_ts end
    end
    if byte then moves[#moves + 1] = {name, mark .. byte .. rest, field_value} end
  end
end
for _, move in ipairs(moves) do
  h[move[1]] = nil
  h[move[2]] = move[3]
end
recoded = recoded + #moves
if recoded > 0 then map = cmsgpack.pack(h) end
renamed = renamed + recoded
-- Layout 6's trail starts with its format byte; layout 5's with a 4-byte
-- length, i.e. a zero byte. Its event tokens keep their first 6 bytes (what
-- profile.token gives a new event), and so do natural keys (from 8);
-- hours go from 4 bytes to 3, a session's or an unjudged day's ms from a
-- double to 6 bytes.
local compacted = 0
if #trail > 0 and string.byte(trail, 1) == 0 then
  local n_days, n_sess, n_eids, n_edges, at = struct.unpack('>I4I4I4I4', trail)
  local bitmap = string.sub(trail, at, at + n_days - 1); at = at + n_days
  local sess = string.sub(trail, at, at + n_sess - 1); at = at + n_sess
  local eids = string.sub(trail, at, at + n_eids - 1); at = at + n_eids
  local parts = {}
  for i = 1, #sess, 12 do
    parts[#parts + 1] = string.sub(sess, i, i + 3) .. struct.pack('>I6', (struct.unpack('>d', sess, i + 4)))
  end
  sess = table.concat(parts)
  parts = {}
  for i = 1, #eids, 12 do
    parts[#parts + 1] = string.sub(eids, i, i + 5) .. struct.pack('>I3', (struct.unpack('>I4', eids, i + 8)))
  end
  eids = table.concat(parts)
  local edges = string.sub(trail, at, at + n_edges - 1); at = at + n_edges
  parts = {}
  for i = 1, #edges, 20 do
    parts[#parts + 1] = struct.pack('>i4I6I6', struct.unpack('>i4dd', edges, i))
  end
  edges = table.concat(parts)
  local orders = string.sub(trail, at)
  parts = {}
  for i = 1, #orders, 8 do parts[#parts + 1] = string.sub(orders, i, i + 5) end
  orders = table.concat(parts)
  trail = struct.pack('>BI3I3I3I3', 6, #bitmap, #sess, #eids, #edges)
    .. bitmap .. sess .. eids .. edges .. orders
  compacted = 1
end
if recoded > 0 or compacted > 0 then set_keeping_ttl(KEYS[1], map .. trail) end
return {renamed, packed, merged, folded, compacted, unknown}
