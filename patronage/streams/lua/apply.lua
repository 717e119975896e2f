#!lua
-- (A shebang: Redis refuses the whole script up front when over maxmemory,
-- instead of failing at its first write and leaving the earlier ones.)
-- Apply one customer's events atomically. Mirrors patronage/models/profile.py
-- (apply); tests hold the two equal. Touches only this customer's keys, which
-- share one hash tag, so it runs unchanged on Redis Cluster.
--
-- Keys, arguments, settings, hash fields, the packed deltas, the finding
-- JSON and the reply are defined in patronage/models/layout.py; the comment
-- after each KEYS/ARGV read and each read of the deltas names its entry
-- there (tests/unit/test_layout.py holds them equal).
-- Returns {applied, duplicate offsets, duplicate event ids, outbox items,
--          profile (the stored value), when to judge again ('' = nothing pending)}

-- The script is a library of helpers and one entry point, `apply`: the
-- store loads it as a Redis function where it can (Redis 7), so the helpers
-- below are made once per server instead of once per call (making ~28
-- closures on every call was ~8 % of a live call's instructions:
-- docs/benchmarks.md); elsewhere as a script whose own body is the entry
-- point's (store.apply_as_script). The state of one call lives in the
-- locals below, each set by `apply` before any helper reads it: a call
-- never sees the one before.
local P, OUT, RISK  -- this call's keys
local deltas  -- this call's packed deltas
local h, trail  -- the profile's map and its trail, as stored
local dirty  -- whether the profile's map is to be written back
-- The store's settings (layout.APPLY_SETTINGS) are written into the script
-- where they are used (each placeholder) when the store loads it: a store's
-- settings never change. Reading them as arguments on every call cost ~3 %
-- of the script's instructions, and as locals each closure below that uses
-- one captured it again on every call (Lua's upvalue lookup walks the
-- captured locals: docs/benchmarks.md).
local DAY_MS = 86400000
-- Fields per order origin (layout.ORIGINS).
local ORDERS_AT = {online = 'orders_online', store = 'orders_store'}
local SPEND_AT = {online = 'spend_online', store = 'spend_store'}

-- Field names below are layout.py's; the store loads this script with each
-- quoted one replaced by its code (layout.STORED_NAMES), so the
-- profile, this table and the reply all use the codes and nothing
-- translates. The profile is one cmsgpack map (layout.PROFILE_FORMAT):
-- numbers stay numbers, so none is parsed or formatted per call. The trail
-- follows the map in the same value.

-- Shortest of %.15g/%.17g that reads back exactly: keeps hashes small.
local function fmt(x)
  local short = string.format('%.15g', x)
  if tonumber(short) == x then return short end
  return string.format('%.17g', x)
end
-- The map holds numbers as numbers (cmsgpack), so they are read and
-- written in place (tables of changed fields beside it cost 8-10 % of the
-- script's instructions: docs/benchmarks.md), as `h[f] or 0` and `h[f] = x`
-- rather than through helper functions: a Lua call per field read or write
-- cost 12 % of a catch-up's instructions. An event's first write, its
-- offset, sets `dirty`; the writes that follow it need not.

-- The trail (layout.TRAIL_FORMAT): a format byte, the 3-byte lengths of
-- the visit-day bitmap, the sessions, the dedupe window and the unjudged
-- days, those four, then the natural keys to the end. Read once, written
-- once (if changed), with the profile: one key instead of six saves five
-- key overheads per customer.
local TRAIL_FORMAT = 6
local bitmap, sess_raw, eids, edges_raw, order_keys
local trail_changed

-- Count once (mirrors profile.py _first_time): orders by natural key for
-- life, other events by id within the dedupe window of event time.
-- A record: the event token's first 6 bytes, the event hour in 3.
local EREC = 9
-- Read once a call (nil: not yet): the newest hour among the records, and
-- the oldest among those a drop may remove, all but the last late_kept
-- arrivals. Most of a customer's records are those last arrivals, so an
-- event reads only the few before them again (reading every record each
-- time an event opened a new hour cost 5 % of the script's instructions
-- in a catch-up).
local newest_hour, droppable_oldest
-- Where a record of `size` bytes starts with `token` (nil: none does).
local function record_at(s, token, size)
  local from = 1
  while true do
    local at = string.find(s, token, from, true)
    if not at then return nil end
    if (at - 1) % size == 0 then return at end
    from = at + 1
  end
end
local function hour_at(i)  -- i: the record's 1-based position
  return (struct.unpack('>I3', eids, (i - 1) * EREC + 7))
end
local function load_hours()
  if newest_hour ~= nil then return end
  newest_hour, droppable_oldest = -1, math.huge
  local count = #eids / EREC
  for i = 1, count do
    local hour = hour_at(i)
    if hour > newest_hour then newest_hour = hour end
    if i <= count - ${late_kept} and hour < droppable_oldest then droppable_oldest = hour end
  end
end
-- nk, eid: the natural key's and the event id's tokens (raw bytes); t: event ms.
local function first_time(nk, eid, t)
  if nk ~= '' then
    if record_at(order_keys, nk, 6) then return false end
    order_keys = order_keys .. nk
    trail_changed = true
    return true
  end
  if record_at(eids, eid, EREC) then return false end
  local hour = math.floor(t / 3600000)
  load_hours()
  if newest_hour < 0 then newest_hour = hour end
  eids = eids .. eid .. struct.pack('>I3', hour)
  trail_changed = true
  local count = #eids / EREC
  local recent = count - ${late_kept}  -- records 1..recent may be dropped
  if recent >= 1 then
    -- the arrival that just stopped being one of the last late_kept
    local entering = hour_at(recent)
    if entering < droppable_oldest then droppable_oldest = entering end
  end
  local horizon = math.max(newest_hour, hour) - ${dedupe_window_hours}
  -- (nothing to drop while no droppable record is outside the window)
  if (hour > newest_hour or hour < newest_hour - ${dedupe_window_hours}) and droppable_oldest < horizon then
    -- keep the window of the newest event, and the last late_kept arrivals;
    -- copied in runs of kept records (usually one), not record by record
    local runs, run_from = {}, nil
    droppable_oldest = math.huge
    for i = 1, recent do
      local at = hour_at(i)
      if at >= horizon then
        run_from = run_from or i
        if at < droppable_oldest then droppable_oldest = at end
      elseif run_from then
        runs[#runs + 1] = string.sub(eids, (run_from - 1) * EREC + 1, (i - 1) * EREC)
        run_from = nil
      end
    end
    if run_from then runs[#runs + 1] = string.sub(eids, (run_from - 1) * EREC + 1, recent * EREC) end
    runs[#runs + 1] = string.sub(eids, recent * EREC + 1)
    -- (one run, the usual case in a catch-up: taken as it is, not copied again)
    eids = #runs == 1 and runs[1] or table.concat(runs)
  end
  if hour > newest_hour then newest_hour = hour end
  if #eids > ${dedupe_max_events} * EREC then
    eids = string.sub(eids, -${dedupe_max_events} * EREC)
    newest_hour = nil
  end
  return true
end

-- A capped map's distinct-key count lives at '#' .. prefix, a name no key
-- can reach (mirrors profile.py _inc_capped, incl. moving a legacy count).
local COUNTER_OF = {}  -- each map's count name (kept between calls)
local function inc_capped(prefix, key, by)
  local name = prefix .. key
  local counter = COUNTER_OF[prefix]
  if counter == nil then
    counter = '#' .. prefix
    COUNTER_OF[prefix] = counter
  end
  if h[counter] == nil and h[prefix .. '#'] ~= nil then
    h[counter] = h[prefix .. '#'] or 0
    h[prefix .. '#'] = nil
  end
  if h[name] == nil and key ~= '_other' then
    local distinct = h[counter] or 0
    if distinct >= ${map_cap} then
      name = prefix .. '_other'
    else
      h[counter] = distinct + 1
    end
  end
  h[name] = (h[name] or 0) + by
end

-- Visit days live in a bitmap whose bit 0 is day `day0` (a multiple of 8, so
-- moving day0 back is a whole-byte prepend); bit 0 is the MSB of byte 1.
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

-- Sets a day's bit; false if it was set already.
local function set_bit(pos)
  local index = math.floor(pos / 8) + 1
  if #bitmap < index then bitmap = bitmap .. string.rep('\0', index - #bitmap) end
  local byte = string.byte(bitmap, index)
  local mask = 2 ^ (7 - pos % 8)
  if math.floor(byte / mask) % 2 == 1 then return false end
  bitmap = string.sub(bitmap, 1, index - 1) .. string.char(byte + mask) .. string.sub(bitmap, index + 1)
  trail_changed = true
  return true
end

local function add_day(day)
  local day0 = h['day0']
  if day0 == nil then
    day0 = day - (day % 8)
    h['day0'] = day0
  elseif day < day0 then
    local new0 = day - (day % 8)
    bitmap = string.rep('\0', (day0 - new0) / 8) .. bitmap
    trail_changed = true
    day0 = new0
    h['day0'] = day0
  end
  local pos = day - day0
  if not set_bit(pos) then return end
  local sumsq = h['gap_sumsq'] or 0
  local visits = h['visits'] or 0
  if visits > 0 then
    local first, last = h['first_day'] or 0, h['last_day'] or 0
    if day > last then
      sumsq = sumsq + (day - last) ^ 2
      h['last_day'] = day
    elseif day < first then
      sumsq = sumsq + (first - day) ^ 2
      h['first_day'] = day
    else
      local prev, nxt = prev_day(pos, day0), next_day(pos, day0)
      sumsq = sumsq + (day - prev) ^ 2 + (nxt - day) ^ 2 - (nxt - prev) ^ 2
    end
  else
    h['first_day'] = day
    h['last_day'] = day
  end
  h['gap_sumsq'] = sumsq
  h['visits'] = visits + 1
end

local function touch(t, day)
  if h['last_seen'] == nil then
    h['first_seen'] = t
    h['last_seen'] = t
  else
    local reference = h['last_seen'] or 0
    if t > reference then
      local scale = 2 ^ (-(t - reference) / ${half_life_ms})
      h['freq_decayed'] = (h['freq_decayed'] or 0) * scale
      h['monetary_decayed'] = (h['monetary_decayed'] or 0) * scale
      h['last_seen'] = t
    end
    if t < (h['first_seen'] or 0) then h['first_seen'] = t end
  end
  add_day(day)
end

-- Lapse judging: mirrors patronage/models/lapse.py (judge) and profile.py
-- (_add_edge, judge_lapses). The trail's unjudged days hold, per visit day
-- not yet judged, its first and last activity; a gap is decided only once
-- the event clock has passed it, so a slower topic cannot cause a false alert.
local EDGE = 16  -- '>i4I6I6': day, first ms, last ms
local edges, edges_changed
local function load_edges()
  if edges ~= nil then return end
  edges = {}
  for i = 1, #edges_raw, EDGE do
    local day, lo, hi = struct.unpack('>i4I6I6', edges_raw, i)
    edges[day] = {lo, hi}
  end
end
local function add_edge(day, t)
  local judged_day = h['judged_day']
  if judged_day and day < judged_day then return end
  load_edges()
  local edge = edges[day]
  if edge == nil then
    edges[day] = {t, t}
  else
    -- (in place: a table an event was garbage for the collector)
    if t < edge[1] then edge[1] = t end
    if t > edge[2] then edge[2] = t end
  end
  edges_changed = true
end

local function moment_at(hi, visits, day)
  if visits < ${lapse_min_visits} then return nil end
  local gap = 0
  if visits >= 2 then gap = (day - (h['first_day'] or 0)) / (visits - 1) end
  local threshold = math.max(${lapse_min_gap_days}, ${lapse_gap_multiplier} * gap)
  return math.max(hi + threshold * DAY_MS, (h['first_seen'] or 0) + ${lapse_min_tenure_days} * DAY_MS)
end

local function push_finding(kind, episode, ts, gap, span)
  local segment = h['segment'] or 'null'
  redis.call('RPUSH', OUT, '{"k":"' .. kind .. '","e":' .. fmt(math.floor(episode))
    .. ',"ts":' .. fmt(math.floor(ts)) .. ',"g":' .. fmt(gap)
    .. ',"s":' .. fmt(h['spend_total'] or 0) .. ',"sp":' .. fmt(span)
    .. ',"seg":' .. segment .. '}')
end

-- Returns when judging again can decide more (nil: nothing pending).
local function judge(clock)
  load_edges()
  local days = {}
  for day, _ in pairs(edges) do days[#days + 1] = day end
  if #days == 0 then return nil end
  table.sort(days)
  local total = h['visits'] or 0
  local lapse_day = h['lapse_day']
  local first_day = h['first_day'] or 0
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
    edges_changed = true
    decided = decided + 1
  end
  if decided > 0 then
    h['judged_day'] = days[decided + 1]
    dirty = true
  end
  if lapse_day ~= h['lapse_day'] then
    h['lapse_day'] = lapse_day
    dirty = true
  end
  return due
end

-- Sessions: the newest `session_window` by first activity, as 10-byte
-- records (4-byte token, first ms in 6) in the trail. Mirrors profile.py
-- _add_session: an earlier sight lowers a session's time; past the window
-- the oldest go (by time, then token), as a sorted set would rank them.
local SREC = 10
-- The records stay packed: decoding every session into a table and packing
-- them all again on each call cost 8 % of the script's instructions at a
-- live worker's few events a call (docs/benchmarks.md).
local function add_session(token, t)
  local at = record_at(sess_raw, token, SREC)
  if at then
    if t < struct.unpack('>I6', sess_raw, at + 4) then
      sess_raw = string.sub(sess_raw, 1, at + 3) .. struct.pack('>I6', t) .. string.sub(sess_raw, at + SREC)
      trail_changed = true
    end
    return false
  end
  sess_raw = sess_raw .. token .. struct.pack('>I6', t)
  trail_changed = true
  while #sess_raw > ${session_window} * SREC do
    -- One scan for the oldest (tokens compared as numbers: Lua's string
    -- order follows the locale); the others keep their order.
    local oldest = 1
    local oldest_t = (struct.unpack('>I6', sess_raw, 5))
    local oldest_token = (struct.unpack('>I4', sess_raw, 1))
    for i = SREC + 1, #sess_raw, SREC do
      local first = (struct.unpack('>I6', sess_raw, i + 4))
      if first <= oldest_t then
        local number = (struct.unpack('>I4', sess_raw, i))
        if first < oldest_t or number < oldest_token then
          oldest, oldest_t, oldest_token = i, first, number
        end
      end
    end
    sess_raw = string.sub(sess_raw, 1, oldest - 1) .. string.sub(sess_raw, oldest + SREC)
  end
  return true
end

--!include base36
local function newer(t, value, current)
  local bar = string.find(current, '|', 1, true)
  local cur_t = from_base36(string.sub(current, 1, bar - 1))
  if t ~= cur_t then return t > cur_t end
  return value > string.sub(current, bar + 1)
end

-- The deltas (layout.DELTA_FORMATS): records back to back, read in place —
-- no JSON parse and no table per delta (decoding JSON into a table per delta
-- was a tenth of the script's instructions). An empty string is absent.
-- Each kind's reader takes its record's rest even when the event is not
-- applied (a duplicate): the next record starts after it.
local at  -- where the next unread byte of the deltas is

local function click(fresh, t)
  local sid, channel, device
  sid, channel, device, at = struct.unpack('>Bc0Hc0Hc0', deltas, at)  -- click
  if not fresh then return end
  h['clicks'] = (h['clicks'] or 0) + 1
  if sid ~= '' then
    if add_session(sid, t) then h['sessions'] = (h['sessions'] or 0) + 1 end
  end
  if channel ~= '' then inc_capped('ch:', channel, 1) end
  if device ~= '' then inc_capped('dev:', device, 1) end
end

local function order_sums(t, origin, basket, returned, net)
  if origin == '' then origin = 'online' end
  local weight = 2 ^ (-((h['last_seen'] or 0) - t) / ${half_life_ms})
  if basket > 0 then
    h['orders'] = (h['orders'] or 0) + 1
    h[ORDERS_AT[origin]] = (h[ORDERS_AT[origin]] or 0) + 1
    h['basket_sum'] = (h['basket_sum'] or 0) + basket
    h['max_basket'] = math.max(h['max_basket'] or 0, basket)
    h['last_order_at'] = math.max(h['last_order_at'] or 0, t)
    local first_at = h['first_order_at'] or 0
    if h['first_order_at'] == nil or t < first_at
        or (t == first_at and basket < (h['first_order_value'] or 0)) then
      h['first_order_at'] = t
      h['first_order_value'] = basket
    end
    h['freq_decayed'] = (h['freq_decayed'] or 0) + weight
    if ${record_orders} == 1 and (h['risk_decided'] == nil or t > h['risk_decided']) then
      -- (t is whole ms: %d prints what fmt would, without a float format)
      redis.call('APPEND', RISK, string.format('%d', t) .. ',' .. fmt(basket) .. ';')
    end
  end
  h['spend_total'] = (h['spend_total'] or 0) + net
  h[SPEND_AT[origin]] = (h[SPEND_AT[origin]] or 0) + net
  h['returns_value'] = (h['returns_value'] or 0) + returned
  h['monetary_decayed'] = (h['monetary_decayed'] or 0) + weight * net
end

local function order(fresh, t)
  local origin, basket, returned, net, payment, channel, n_cats
  origin, basket, returned, net, payment, channel, n_cats, at =
    struct.unpack('>Bc0dddHc0Hc0H', deltas, at)  -- order
  if fresh then order_sums(t, origin, basket, returned, net) end
  -- (the maps are apart: the categories may go in as they are read)
  for _ = 1, n_cats do
    local category, value
    category, value, at = struct.unpack('>Hc0d', deltas, at)  -- category
    if fresh then inc_capped('cat:', category, value) end
  end
  if not fresh then return end
  if payment ~= '' then inc_capped('pay:', payment, 1) end
  if channel ~= '' then inc_capped('ch:', channel, 1) end
end

local function attributes(fresh, t)
  local n_pairs
  n_pairs, at = struct.unpack('>H', deltas, at)  -- attributes
  for _ = 1, n_pairs do
    local attribute, value
    attribute, value, at = struct.unpack('>Hc0I4c0', deltas, at)  -- attribute
    local name = 'a:' .. attribute
    local current = h[name]
    if fresh and (current == nil or newer(t, value, current)) then
      h[name] = base36(math.floor(t)) .. '|' .. value
      dirty = true
    end
  end
end

-- Each source's offset field, named once, not once an event (kept between
-- calls).
local OFFSET_FIELDS = {}

local function apply(KEYS, ARGV)
  P = KEYS[1]  -- profile
  OUT = KEYS[2]  -- outbox
  RISK = KEYS[3]  -- risk_orders
  deltas = ARGV[1]  -- deltas
  local clock = tonumber(ARGV[2])  -- clock
  local stored = redis.call('GET', P)
  h, trail = {}, ''
  if stored then
    local after
    after, h = cmsgpack.unpack_one(stored)
    if after > 0 then trail = string.sub(stored, after + 1) end
  end
  dirty = false
  bitmap, sess_raw, eids, edges_raw, order_keys = '', '', '', '', ''
  if #trail > 0 then
    local _, n_days, n_sess, n_eids, n_edges, from = struct.unpack('>BI3I3I3I3', trail)
    bitmap = string.sub(trail, from, from + n_days - 1); from = from + n_days
    sess_raw = string.sub(trail, from, from + n_sess - 1); from = from + n_sess
    eids = string.sub(trail, from, from + n_eids - 1); from = from + n_eids
    edges_raw = string.sub(trail, from, from + n_edges - 1); from = from + n_edges
    order_keys = string.sub(trail, from)
  end
  trail_changed = false
  newest_hour, droppable_oldest = nil, nil
  edges, edges_changed = nil, false
  at = 1

  local applied, dup_offset, dup_event = 0, 0, 0
  while at <= #deltas do
    local kind, source, offset, t, day, eid, nk
    kind, source, offset, t, day, eid, at = struct.unpack('>c1Bc0ddi4c6', deltas, at)  -- head
    nk = ''
    if kind == 'o' then nk, at = struct.unpack('>Bc0', deltas, at) end  -- natural key
    local fresh = false
    local offset_field = OFFSET_FIELDS[source]
    if offset_field == nil then
      offset_field = 'o:' .. source
      OFFSET_FIELDS[source] = offset_field
    end
    local stored_offset = h[offset_field]
    if stored_offset and offset <= stored_offset then
      dup_offset = dup_offset + 1
    else
      h[offset_field] = offset
      dirty = true
      if not first_time(nk, eid, t) then
        dup_event = dup_event + 1
      else
        fresh = true
        h['events_applied'] = (h['events_applied'] or 0) + 1
        applied = applied + 1
      end
    end
    if kind == 'a' then
      attributes(fresh, t)
    else
      if fresh then
        touch(t, day)
        add_edge(day, t)
      end
      if kind == 'c' then click(fresh, t) else order(fresh, t) end
    end
  end

  local due = judge(clock)

  local profile = cmsgpack.pack(h)
  if trail_changed or edges_changed then
    if edges_changed then
      local days, parts = {}, {}
      for day, _ in pairs(edges) do days[#days + 1] = day end
      table.sort(days)
      for i, day in ipairs(days) do parts[i] = struct.pack('>i4I6I6', day, edges[day][1], edges[day][2]) end
      edges_raw = table.concat(parts)
    end
    trail = struct.pack('>BI3I3I3I3', TRAIL_FORMAT, #bitmap, #sess_raw, #eids, #edges_raw)
      .. bitmap .. sess_raw .. eids .. edges_raw .. order_keys
    dirty = true
  end
  -- KEEPTTL: a call that only judged (nothing applied) keeps the expiry.
  if dirty then redis.call('SET', P, profile .. trail, 'KEEPTTL') end
  if ${retention_ms} > 0 and applied > 0 then
    for _, key in ipairs({P, RISK}) do
      redis.call('PEXPIRE', key, ${retention_ms})
    end
  end
  -- Pending findings go back on every call, redeliveries included, so a crash
  -- between this script and the Kafka send cannot lose an alert.
  -- The profile as it now is: the value just stored.
  -- `due` is read back by float(), exact from %.17g: one format, not fmt's two.
  return {applied, dup_offset, dup_event, redis.call('LRANGE', OUT, 0, -1), profile,
    due and string.format('%.17g', due) or ''}
end
