#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Apply one customer's events atomically. Mirrors patronage/models/profile.py
-- (apply); tests hold the two equal. Touches only this customer's keys, which
-- share one hash tag, so it runs unchanged on Redis Cluster.
--
-- Keys, arguments, hash fields, the delta and finding JSON and the reply are
-- defined in patronage/models/layout.py; the comment after each KEYS/ARGV
-- read names its entry there (tests/unit/test_layout.py holds them equal).
-- Returns {applied, duplicate offsets, duplicate event ids, outbox items,
--          profile (JSON object, field -> text), when to judge again ('' = nothing pending)}

local P = KEYS[1]  -- profile
local DAYS = KEYS[2]  -- days
local SESS = KEYS[3]  -- sessions
local EIDS = KEYS[4]  -- event_ids
local OUT = KEYS[5]  -- outbox
local ORDERS = KEYS[6]  -- order_keys
local EDGES = KEYS[7]  -- edges
local RISK = KEYS[8]  -- risk_orders
local half_life = tonumber(ARGV[1])  -- half_life_ms
local cap = tonumber(ARGV[2])  -- map_cap
local session_window = tonumber(ARGV[3])  -- session_window
local window_hours = tonumber(ARGV[4])  -- dedupe_window_hours
local min_visits = tonumber(ARGV[5])  -- lapse_min_visits
local min_tenure_days = tonumber(ARGV[6])  -- lapse_min_tenure_days
local min_gap_days = tonumber(ARGV[7])  -- lapse_min_gap_days
local gap_multiplier = tonumber(ARGV[8])  -- lapse_gap_multiplier
local deltas = cjson.decode(ARGV[9])  -- deltas
local retention_ms = tonumber(ARGV[10] or '0')  -- retention_ms
local max_events = tonumber(ARGV[11])  -- dedupe_max_events
local clock = tonumber(ARGV[12])  -- clock
local LATE_KEPT = tonumber(ARGV[13])  -- late_kept
local record_orders = ARGV[14] == '1'  -- record_orders
local DAY_MS = 86400000
-- Fields per order origin (layout.ORIGINS).
local ORDERS_AT = {online = 'orders_online', store = 'orders_store'}
local SPEND_AT = {online = 'spend_online', store = 'spend_store'}

-- Field names below are layout.py's; the store loads this script with each
-- quoted one replaced by its stored name (layout.STORED_NAMES), so the hash,
-- this table and the reply all use the short names and nothing translates.
local h = {}
local raw = redis.call('HGETALL', P)
for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
local changed = {}
local removed = {}

-- Shortest of %.15g/%.17g that reads back exactly: keeps hashes small.
local function fmt(x)
  local short = string.format('%.15g', x)
  if tonumber(short) == x then return short end
  return string.format('%.17g', x)
end
-- Hashes arrive as 8 hex digits; they are stored as 4 raw bytes.
local function unhex(hex) return (string.gsub(hex, '..', function(cc) return string.char(tonumber(cc, 16)) end)) end
-- Numbers are parsed once and formatted once (at the end), not on every put.
local nums = {}
local function num(f)
  local x = nums[f]
  if x == nil then
    local v = h[f]
    x = (v and v ~= true) and tonumber(v) or 0
    nums[f] = x
  end
  return x
end
local function put(f, x) nums[f] = x; h[f] = true; changed[f] = true end

-- Count once (mirrors profile.py _first_time): orders by natural key for
-- life, other events by id within the dedupe window of event time.
local EREC = 12
local eids = redis.call('GET', EIDS) or ''
local eids_changed = false
local newest_hour = nil
local order_keys = nil
local orders_changed = false
local function has_record(s, token, size)
  local from = 1
  while true do
    local at = string.find(s, token, from, true)
    if not at then return false end
    if (at - 1) % size == 0 then return true end
    from = at + 1
  end
end
local function load_newest()
  if newest_hour ~= nil then return end
  newest_hour = -1
  for i = 1, #eids, EREC do
    local hour = struct.unpack('>I4', eids, i + 8)
    if hour > newest_hour then newest_hour = hour end
  end
end
local function first_time(d)
  if d.nk then
    if order_keys == nil then order_keys = redis.call('GET', ORDERS) or '' end
    local token = unhex(d.nk)
    if has_record(order_keys, token, 8) then return false end
    order_keys = order_keys .. token
    orders_changed = true
    return true
  end
  local token = unhex(d.eid)
  if has_record(eids, token, EREC) then return false end
  local hour = math.floor(d.t / 3600000)
  load_newest()
  if newest_hour < 0 then newest_hour = hour end
  eids = eids .. token .. struct.pack('>I4', hour)
  eids_changed = true
  if hour > newest_hour or hour < newest_hour - window_hours then
    -- keep the window of the newest event, and the last LATE_KEPT arrivals
    local horizon = math.max(newest_hour, hour) - window_hours
    local count = #eids / EREC
    local kept = {}
    local index = 0
    for i = 1, #eids, EREC do
      if index >= count - LATE_KEPT or struct.unpack('>I4', eids, i + 8) >= horizon then
        kept[#kept + 1] = string.sub(eids, i, i + EREC - 1)
      end
      index = index + 1
    end
    eids = table.concat(kept)
  end
  if hour > newest_hour then newest_hour = hour end
  if #eids > max_events * EREC then
    eids = string.sub(eids, -max_events * EREC)
    newest_hour = nil
  end
  return true
end

-- A capped map's distinct-key count lives at '#' .. prefix, a name no key
-- can reach (mirrors profile.py _inc_capped, incl. moving a legacy count).
local function inc_capped(prefix, key, by)
  local name = prefix .. key
  local counter = '#' .. prefix
  if h[counter] == nil and h[prefix .. '#'] ~= nil then
    put(counter, num(prefix .. '#'))
    h[prefix .. '#'] = nil
    changed[prefix .. '#'] = nil
    nums[prefix .. '#'] = nil
    removed[#removed + 1] = prefix .. '#'
  end
  if h[name] == nil and key ~= '_other' then
    local distinct = num(counter)
    if distinct >= cap then
      name = prefix .. '_other'
    else
      put(counter, distinct + 1)
    end
  end
  put(name, num(name) + by)
end

-- Visit days live in a bitmap whose bit 0 is day `day0` (a multiple of 8, so
-- moving day0 back is a whole-byte prepend). Redis bit 0 is the MSB of byte 1.
local bitmap = nil
local function load_bitmap() if bitmap == nil then bitmap = redis.call('GET', DAYS) or '' end end
local function bit_at(pos)
  local byte = string.byte(bitmap, math.floor(pos / 8) + 1) or 0
  return math.floor(byte / 2 ^ (7 - pos % 8)) % 2
end
local function prev_day(pos, day0)
  pos = pos - 1
  while pos >= 0 do
    if bit_at(pos) == 1 then return day0 + pos end
    pos = pos - 1
  end
  return nil
end
local function next_day(pos, day0)
  local limit = #bitmap * 8
  pos = pos + 1
  while pos < limit do
    if bit_at(pos) == 1 then return day0 + pos end
    pos = pos + 1
  end
  return nil
end

local function add_day(day)
  local day0 = h['day0'] and num('day0')
  if day0 == nil then
    day0 = day - (day % 8)
    put('day0', day0)
  elseif day < day0 then
    local new0 = day - (day % 8)
    load_bitmap()
    bitmap = string.rep('\0', (day0 - new0) / 8) .. bitmap
    redis.call('SET', DAYS, bitmap)
    day0 = new0
    put('day0', day0)
  end
  local pos = day - day0
  if redis.call('SETBIT', DAYS, pos, 1) == 1 then return end
  bitmap = nil
  local sumsq = num('gap_sumsq')
  local visits = num('visits')
  if visits > 0 then
    local first, last = num('first_day'), num('last_day')
    if day > last then
      sumsq = sumsq + (day - last) ^ 2
      put('last_day', day)
    elseif day < first then
      sumsq = sumsq + (first - day) ^ 2
      put('first_day', day)
    else
      load_bitmap()
      local prev, nxt = prev_day(pos, day0), next_day(pos, day0)
      sumsq = sumsq + (day - prev) ^ 2 + (nxt - day) ^ 2 - (nxt - prev) ^ 2
    end
  else
    put('first_day', day)
    put('last_day', day)
  end
  put('gap_sumsq', sumsq)
  put('visits', visits + 1)
end

local function touch(d)
  if h['last_seen'] == nil then
    put('first_seen', d.t)
    put('last_seen', d.t)
  else
    local reference = num('last_seen')
    if d.t > reference then
      local scale = 2 ^ (-(d.t - reference) / half_life)
      put('freq_decayed', num('freq_decayed') * scale)
      put('monetary_decayed', num('monetary_decayed') * scale)
      put('last_seen', d.t)
    end
    if d.t < num('first_seen') then put('first_seen', d.t) end
  end
  add_day(d.day)
end

-- Lapse judging: mirrors patronage/models/lapse.py (judge) and profile.py
-- (_add_edge, judge_lapses). EDGES holds, per visit day not yet judged, its
-- first and last activity ("lo:hi"); a gap is decided only once the event
-- clock has passed it, so a slower topic cannot cause a false alert.
local edges = nil
local edges_changed = {}
local edges_removed = {}
local function load_edges()
  if edges ~= nil then return end
  edges = {}
  local raw_edges = redis.call('HGETALL', EDGES)
  for i = 1, #raw_edges, 2 do
    local lo, hi = string.match(raw_edges[i + 1], '^(%-?[%d.e+]+):(%-?[%d.e+]+)$')
    edges[tonumber(raw_edges[i])] = {tonumber(lo), tonumber(hi)}
  end
end
local function add_edge(d)
  if h['judged_day'] and d.day < num('judged_day') then return end
  load_edges()
  local edge = edges[d.day]
  if edge == nil then
    edges[d.day] = {d.t, d.t}
  else
    edges[d.day] = {math.min(edge[1], d.t), math.max(edge[2], d.t)}
  end
  edges_changed[d.day] = true
end

local function moment_at(hi, visits, day)
  if visits < min_visits then return nil end
  local gap = 0
  if visits >= 2 then gap = (day - num('first_day')) / (visits - 1) end
  local threshold = math.max(min_gap_days, gap_multiplier * gap)
  return math.max(hi + threshold * DAY_MS, num('first_seen') + min_tenure_days * DAY_MS)
end

local function push_finding(kind, episode, ts, gap, span)
  local segment = h['segment'] or 'null'
  redis.call('RPUSH', OUT, '{"k":"' .. kind .. '","e":' .. fmt(math.floor(episode))
    .. ',"ts":' .. fmt(math.floor(ts)) .. ',"g":' .. fmt(gap)
    .. ',"s":' .. fmt(num('spend_total')) .. ',"sp":' .. fmt(span)
    .. ',"seg":' .. segment .. '}')
end

-- Returns when judging again can decide more (nil: nothing pending).
local function judge(clock)
  load_edges()
  local days = {}
  for day, _ in pairs(edges) do days[#days + 1] = day end
  if #days == 0 then return nil end
  table.sort(days)
  local total = num('visits')
  local lapse_day = h['lapse_day'] and num('lapse_day') or nil
  local first_day = num('first_day')
  local due = nil
  local decided = 0
  for i, day in ipairs(days) do
    local hi = edges[day][2]
    local visits = total - (#days - i)
    local moment = moment_at(hi, visits, day)
    local gap = 0
    if visits >= 2 then gap = (day - first_day) / (visits - 1) end
    local span = day - first_day
    if i == #days then
      if moment ~= nil and lapse_day ~= day then
        if clock > moment then
          push_finding('lapsed', hi, moment, gap, span)
          lapse_day = day
        else
          due = moment
        end
      end
      break
    end
    local lo = edges[days[i + 1]][1]
    if moment ~= nil and moment < lo then
      if lapse_day ~= day then
        if clock <= moment then due = moment; break end
        push_finding('lapsed', hi, moment, gap, span)
        lapse_day = day
      end
      if lo > clock then due = lo; break end
      push_finding('reactivated', hi, lo, gap, span)
      lapse_day = nil
    else
      if lo > clock then due = lo; break end
      if lapse_day == day then
        push_finding('reactivated', hi, lo, gap, span)
        lapse_day = nil
      end
    end
    edges[day] = nil
    edges_changed[day] = nil
    edges_removed[#edges_removed + 1] = day
    decided = decided + 1
  end
  if decided > 0 then put('judged_day', days[decided + 1]) end
  if lapse_day == nil then
    if h['lapse_day'] then
      h['lapse_day'] = nil
      changed['lapse_day'] = nil
      removed[#removed + 1] = 'lapse_day'
    end
  else
    put('lapse_day', lapse_day)
  end
  return due
end

local function newer(t, value, current)
  local bar = string.find(current, '|', 1, true)
  local cur_t = tonumber(string.sub(current, 1, bar - 1))
  if t ~= cur_t then return t > cur_t end
  return value > string.sub(current, bar + 1)
end

local applied, dup_offset, dup_event = 0, 0, 0
for _, d in ipairs(deltas) do
  local offset_field = 'o:' .. d.src
  if h[offset_field] and d.off <= num(offset_field) then
    dup_offset = dup_offset + 1
  else
    put(offset_field, d.off)
    if not first_time(d) then
      dup_event = dup_event + 1
    else
      put('events_applied', num('events_applied') + 1)
      applied = applied + 1
      if d.k == 'a' then
        for _, pair in ipairs(d.at) do
          local name, value = 'a:' .. pair[1], pair[2]
          local current = h[name]
          if current == nil or newer(d.t, value, current) then
            h[name] = string.format('%d', d.t) .. '|' .. value
            changed[name] = true
          end
        end
      else
        touch(d)
        add_edge(d)
        local weight = 2 ^ (-(num('last_seen') - d.t) / half_life)
        if d.k == 'c' then
          put('clicks', num('clicks') + 1)
          if d.sid then
            if redis.call('ZADD', SESS, 'LT', d.t, unhex(d.sid)) == 1 then
              put('sessions', num('sessions') + 1)
            end
            if redis.call('ZCARD', SESS) > session_window then
              redis.call('ZREMRANGEBYRANK', SESS, 0, -(session_window + 1))
            end
          end
          if d.mc then inc_capped('ch:', d.mc, 1) end
          if d.dv then inc_capped('dev:', d.dv, 1) end
        else
          local origin = d.origin or 'online'
          if d.b > 0 then
            put('orders', num('orders') + 1)
            put(ORDERS_AT[origin], num(ORDERS_AT[origin]) + 1)
            put('basket_sum', num('basket_sum') + d.b)
            put('max_basket', math.max(num('max_basket'), d.b))
            put('last_order_at', math.max(num('last_order_at'), d.t))
            local first_at = num('first_order_at')
            if h['first_order_at'] == nil or d.t < first_at
                or (d.t == first_at and d.b < num('first_order_value')) then
              put('first_order_at', d.t)
              put('first_order_value', d.b)
            end
            put('freq_decayed', num('freq_decayed') + weight)
            if record_orders and (h['risk_decided'] == nil or d.t > num('risk_decided')) then
              redis.call('APPEND', RISK, fmt(d.t) .. ',' .. fmt(d.b) .. ';')
            end
          end
          put('spend_total', num('spend_total') + d.n)
          put(SPEND_AT[origin], num(SPEND_AT[origin]) + d.n)
          put('returns_value', num('returns_value') + d.r)
          put('monetary_decayed', num('monetary_decayed') + weight * d.n)
          for _, pair in ipairs(d.cats) do inc_capped('cat:', pair[1], pair[2]) end
          if d.pm then inc_capped('pay:', d.pm, 1) end
          if d.mc then inc_capped('ch:', d.mc, 1) end
        end
      end
    end
  end
end

local due = judge(clock)

for f, _ in pairs(changed) do
  local x = nums[f]
  if x ~= nil and h[f] == true then h[f] = fmt(x) end
end
local args = {}
for f, _ in pairs(changed) do
  args[#args + 1] = f
  args[#args + 1] = h[f]
end
if #args > 0 then redis.call('HSET', P, unpack(args)) end
if #removed > 0 then redis.call('HDEL', P, unpack(removed)) end
if eids_changed then redis.call('SET', EIDS, eids) end
if orders_changed then redis.call('SET', ORDERS, order_keys) end
local edge_args = {}
for day, _ in pairs(edges_changed) do
  edge_args[#edge_args + 1] = day
  edge_args[#edge_args + 1] = fmt(edges[day][1]) .. ':' .. fmt(edges[day][2])
end
if #edge_args > 0 then redis.call('HSET', EDGES, unpack(edge_args)) end
if #edges_removed > 0 then redis.call('HDEL', EDGES, unpack(edges_removed)) end
if retention_ms > 0 and applied > 0 then
  for _, key in ipairs({P, DAYS, SESS, EIDS, ORDERS, EDGES, RISK}) do
    redis.call('PEXPIRE', key, retention_ms)
  end
end
-- Pending findings go back on every call, redeliveries included, so a crash
-- between this script and the Kafka send cannot lose an alert.
-- The profile as it now is, from the table already in memory (no second
-- HGETALL), as one JSON object: one reply instead of two per field (3-7 %
-- of the call's Redis time; docs/benchmarks.md).
return {applied, dup_offset, dup_event, redis.call('LRANGE', OUT, 0, -1), cjson.encode(h),
  due and fmt(due) or ''}
